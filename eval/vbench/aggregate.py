"""VBench's headline numbers from per-dimension scores (``scripts/cal_final_score.py``).

Each dimension score ``x`` (VBench's raw scale, a fraction) is normalised with VBench's bounds and
weighted::

    n_d = (x_d - min_d) / (max_d - min_d) * w_d
    quality  = sum(n_d, d in QUALITY)  / sum(w_d, d in QUALITY)
    semantic = sum(n_d, d in SEMANTIC) / sum(w_d, d in SEMANTIC)
    total    = (4 * quality + 1 * semantic) / 5

All weights are 1 except dynamic_degree (0.5). The official script counts a missing dimension as 0;
:func:`aggregate` instead averages over the dimensions given (``missing_as_zero=True`` reproduces the
official arithmetic) and marks the result ``partial`` with the missing names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class DimensionBounds:
    group: str  # "quality" or "semantic"
    low: float
    high: float
    weight: float = 1.0


#: VBench @45e79ec ``scripts/constant.py``: normalisation bounds, weight, group per dimension.
DIMENSION_BOUNDS: dict[str, DimensionBounds] = {
    "subject_consistency": DimensionBounds("quality", 0.1462, 1.0),
    "background_consistency": DimensionBounds("quality", 0.2615, 1.0),
    "temporal_flickering": DimensionBounds("quality", 0.6293, 1.0),
    "motion_smoothness": DimensionBounds("quality", 0.706, 0.9975),
    "dynamic_degree": DimensionBounds("quality", 0.0, 1.0, 0.5),
    "aesthetic_quality": DimensionBounds("quality", 0.0, 1.0),
    "imaging_quality": DimensionBounds("quality", 0.0, 1.0),
    "object_class": DimensionBounds("semantic", 0.0, 1.0),
    "multiple_objects": DimensionBounds("semantic", 0.0, 1.0),
    "human_action": DimensionBounds("semantic", 0.0, 1.0),
    "color": DimensionBounds("semantic", 0.0, 1.0),
    "spatial_relationship": DimensionBounds("semantic", 0.0, 1.0),
    "scene": DimensionBounds("semantic", 0.0, 0.8222),
    "appearance_style": DimensionBounds("semantic", 0.0009, 0.2855),
    "temporal_style": DimensionBounds("semantic", 0.0, 0.364),
    "overall_consistency": DimensionBounds("semantic", 0.0, 0.364),
}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0
QUALITY = tuple(d for d, b in DIMENSION_BOUNDS.items() if b.group == "quality")
SEMANTIC = tuple(d for d, b in DIMENSION_BOUNDS.items() if b.group == "semantic")


def normalized(dimension: str, score: float) -> float:
    """``(score - min) / (max - min) * weight`` with VBench's bounds for ``dimension``."""
    bounds = DIMENSION_BOUNDS[dimension]
    return (score - bounds.low) / (bounds.high - bounds.low) * bounds.weight


def _check(scores: Mapping[str, float]) -> dict[str, float]:
    checked = {}
    for name, value in scores.items():
        if name not in DIMENSION_BOUNDS:
            hint = " (use underscores)" if name.replace(" ", "_") in DIMENSION_BOUNDS else ""
            raise ValueError(f"unknown VBench dimension {name!r}{hint}; known: {', '.join(DIMENSION_BOUNDS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"score of {name} must be a finite number, got {value!r}")
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"score of {name} is {value}: VBench dimension scores are fractions (divide percentages by 100)")
        checked[name] = float(value)
    return checked


def aggregate(scores: Mapping[str, float], missing_as_zero: bool = False) -> dict[str, Any]:
    """Quality, semantic and total scores (fractions, as VBench's ``cal_final_score.py``; x100 for %).

    Returns ``{"quality", "semantic", "total", "partial", "missing"}``. With dimensions missing the
    result is ``partial``: a group's mean runs over the dimensions given (or counts the missing ones as
    0 with ``missing_as_zero``, the official script's arithmetic); a group with no dimension at all is
    ``None`` and so is the total.
    """
    given = _check(scores)
    missing = [d for d in DIMENSION_BOUNDS if d not in given]

    def group_mean(dimensions: tuple[str, ...]) -> float | None:
        present = [d for d in dimensions if d in given]
        counted = dimensions if missing_as_zero else present
        if not counted or (not present and not missing_as_zero):
            return None
        weight = sum(DIMENSION_BOUNDS[d].weight for d in counted)
        return sum(normalized(d, given[d]) for d in present) / weight

    quality, semantic = group_mean(QUALITY), group_mean(SEMANTIC)
    total = None
    if quality is not None and semantic is not None:
        total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return {"quality": quality, "semantic": semantic, "total": total, "partial": bool(missing), "missing": missing}
