"""Preference data: pairs, per-image labels, winners and expert sets, from any source.

* :class:`PreferenceBatch` (``batch.py``): a batch of one kind of example, batch-first tensors;
  indexable, concatenable and movable like a :class:`~diffalign.rollout.Rollout`, so the one training
  loop trains on either.
* ``[data]`` config section (``config.py``): where the examples come from and how they are drawn.
"""
from .batch import KINDS, PreferenceBatch
from .config import DataConfig

__all__ = ["DataConfig", "KINDS", "PreferenceBatch"]
