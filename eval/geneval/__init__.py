"""GenEval (Ghosh et al. 2023): object-focused text-to-image evaluation with a detector and rules.

* :mod:`~diffalign.eval.geneval.rules`: the rule engine, :func:`evaluate_detections` (shared with
  the ShapesWorld judge).
* :mod:`~diffalign.eval.geneval.detector`: Mask2Former through transformers with mmdet's instance scoring.
* :mod:`~diffalign.eval.geneval.colors`: the CLIP colour classifier.
* :mod:`~diffalign.eval.geneval.harness`: the 553 prompts, generation, resumable scoring, the summary.

Detector and colour modules import transformers / open_clip only when a model is built.
"""
from __future__ import annotations

from diffalign.eval.detection import Detection, Detector

from .rules import (
    COLORS,
    DEFAULT_OPTIONS,
    RELATIONS,
    TASKS,
    ClauseResult,
    Evaluation,
    GenEvalOptions,
    MetadataError,
    evaluate,
    evaluate_detections,
    filter_detections,
    relative_position,
)

__all__ = [
    "COLORS", "DEFAULT_OPTIONS", "RELATIONS", "TASKS", "ClauseResult", "Detection", "Detector", "Evaluation",
    "GenEvalOptions", "MetadataError", "evaluate", "evaluate_detections", "filter_detections", "relative_position",
]
