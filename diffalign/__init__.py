"""diffalign: align text-to-image and text-to-video diffusion models with preferences.

Subpackages: :mod:`diffalign.pipelines` (model adapters), :mod:`diffalign.scorers` (rewards and
critics), :mod:`diffalign.training` (trainers), :mod:`diffalign.eval` (benchmarks). Bad input raises
:class:`UserError` (a ``ValueError``; see :mod:`diffalign.errors`).
"""
from __future__ import annotations

from .errors import UserError
from .media import load_image, load_video, save_grid, save_image, save_video
from .rollout import Rollout

__version__ = "0.1.0.dev0"

__all__ = ["Rollout", "UserError", "load_image", "load_video", "save_grid", "save_image", "save_video", "__version__"]
