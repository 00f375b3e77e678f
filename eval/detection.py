"""What an object detector returns, for GenEval's rules and VBench's object dimensions alike."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass
class Detection:
    """One detected object: ``box`` in pixels ``(x0, y0, x1, y1)``, confidence ``score``, optional
    ``mask`` (``H×W`` bool array)."""

    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None


class Detector(Protocol):
    """``detector(images B×C×H×W in [0, 1]) -> one {class name: [Detection, ...]} per image``, unfiltered
    (GenEval's thresholds are applied by the rules, not the detector)."""

    def __call__(self, images: torch.Tensor) -> list[dict[str, list[Detection]]]: ...
