"""Preference data: pairs, per-image labels, winners and expert sets, from any source.

* :class:`PreferenceBatch` (``batch.py``): a batch of one kind of example, batch-first tensors;
  indexable, concatenable and movable like a :class:`~diffalign.rollout.Rollout`, so the one training
  loop trains on either.
* ``[data]`` config section (``config.py``): where the examples come from and how they are drawn.
* :func:`open_preferences` (``sources.py``): a :class:`PreferenceDataset` of one kind from Pick-a-Pic
  (Hugging Face ``datasets``), a Diffusion-KTO CSV or a JSONL/CSV manifest.
* :class:`PreferenceLoader` (``loader.py``): the seeded, distributed, resumable batch sampler.
* ``diffalign prefs build|relabel|topk`` (``cli.py``, ``build.py``): make and relabel preference data.
"""
from .batch import KINDS, PreferenceBatch
from .config import DataConfig
from .loader import PreferenceLoader
from .sources import PreferenceDataError, PreferenceDataset, PreferenceExample, open_preferences

__all__ = [
    "DataConfig",
    "KINDS",
    "PreferenceBatch",
    "PreferenceDataError",
    "PreferenceDataset",
    "PreferenceExample",
    "PreferenceLoader",
    "open_preferences",
]
