"""ShapesWorld: coloured shapes, captions from GenEval's grammar, and a judge whose verdicts are exact.

* :mod:`diffalign.shapes.world`: scene sampling, caption grammar, renderer, datasets.
* :mod:`diffalign.shapes.judge`: rule-based detector and GenEval-rule verdicts (reward and benchmark).
* :mod:`diffalign.shapes.motion`: ShapesWorld in motion (clips, motion captions, renderer, datasets).
* :mod:`diffalign.shapes.video_judge`: tracks across frames and exact motion verdicts (scorer ``shapes_video``).
* :mod:`diffalign.shapes.reward`: ``shapes-reward``, a learnt differentiable proxy of the judge (scorer ``shapes_reward``).
"""
from __future__ import annotations

from .world import (
    BACKGROUND,
    COLORS,
    IMAGE_SIZE,
    RELATIONS,
    SHAPES,
    TASKS,
    GrammarError,
    Sample,
    Scene,
    ShapeObject,
    ShapesDataset,
    caption,
    generate_dataset,
    iter_dataset,
    parse_caption,
    render,
    render_tensor,
    sample_prompts,
    sample_scene,
)

__all__ = [
    "BACKGROUND", "COLORS", "IMAGE_SIZE", "RELATIONS", "SHAPES", "TASKS", "GrammarError", "Sample", "Scene",
    "ShapeObject", "ShapesDataset", "caption", "generate_dataset", "iter_dataset", "parse_caption", "render",
    "render_tensor", "sample_prompts", "sample_scene",
]
