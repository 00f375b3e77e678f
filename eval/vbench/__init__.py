"""VBench on one modern install: the official prompts, VBench's preprocessing, its aggregation.

* :func:`evaluate_videos`: score a folder of ``{prompt}-{index}.mp4`` videos, resumably;
  :func:`generate_videos` samples that folder from a video model first.
* :func:`aggregate`: VBench's quality / semantic / total from per-dimension scores.
* :mod:`~diffalign.eval.vbench.dimensions`: each dimension's formula and model; which dimensions are
  unavailable here and why (:data:`UNAVAILABLE`).
"""
from __future__ import annotations

from .aggregate import DIMENSION_BOUNDS, QUALITY, SEMANTIC, aggregate, normalized
from .dimensions import IMPLEMENTED, UNAVAILABLE, DimensionUnavailable, ModelOptions, Video, VideoScore, build_dimensions
from .runner import ALL_DIMENSIONS, evaluate_videos, generate_videos, summarize
from .suite import VIDEOS_PER_PROMPT, VBenchError, VBenchPrompt, load_suite

__all__ = [
    "ALL_DIMENSIONS", "DIMENSION_BOUNDS", "DimensionUnavailable", "IMPLEMENTED", "ModelOptions", "QUALITY", "SEMANTIC",
    "UNAVAILABLE", "VBenchError", "VBenchPrompt", "VIDEOS_PER_PROMPT", "Video", "VideoScore", "aggregate",
    "build_dimensions", "evaluate_videos", "generate_videos", "load_suite", "normalized", "summarize",
]
