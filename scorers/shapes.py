"""ShapesWorld judge as a reward: GenEval-style rules checked exactly on ShapesWorld images.

* ``mode="fraction"`` (default): the judge's dense credit, the mean over the prompt's constraints of
  how far each is met (counts, colours, relations; see :mod:`diffalign.shapes.judge`), in [0, 1].
* ``mode="binary"``: 1 when every constraint holds (GenEval's per-image correctness), else 0.

Prompts are ShapesWorld captions (parsed by the grammar); ``shapes_video`` scores clips of ShapesWorld in
motion against motion captions. The judge is imported when the scorer
is built, so registering it costs nothing. Not differentiable.
"""
from __future__ import annotations

import torch

from diffalign.scorers.base import Scorer, register_scorer

MODES = ("fraction", "binary")


def verdict_scores(verdicts, mode: str, device: torch.device) -> torch.Tensor:
    """The judge's verdicts as scores: 0/1 correctness (``"binary"``) or the dense credit (``"fraction"``)."""
    values = [float(v.correct) if mode == "binary" else float(v.score) for v in verdicts]
    return torch.tensor(values, dtype=torch.float32, device=device)


@register_scorer("shapes")
class ShapesScore(Scorer):
    """Per-image ShapesWorld verdict as a score; see the module docstring."""

    name = "shapes"
    differentiable = False
    batch_size = 64

    def __init__(self, mode: str = "fraction", config=None, batch_size: int | None = None, frame_stride: int = 1):
        super().__init__(batch_size=batch_size, frame_stride=frame_stride)
        if mode not in MODES:
            raise ValueError(f"unknown shapes mode {mode!r}; use one of {MODES}")
        from diffalign.shapes import judge

        self._judge = judge
        self.mode = mode
        self.config = config if config is not None else judge.DEFAULT_CONFIG

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return verdict_scores(self._judge.judge_batch(images.detach(), prompts, self.config), self.mode, images.device)


@register_scorer("shapes_video")
class ShapesVideoScore(Scorer):
    """Per-clip ShapesWorld-in-motion verdict (:mod:`diffalign.shapes.video_judge`) as a score, for
    ``B×T×3×H×W`` videos and motion captions: ``mode="fraction"`` the dense credit, ``"binary"`` 0/1."""

    name = "shapes_video"
    modality = "video"
    differentiable = False
    batch_size = 16

    def __init__(self, mode: str = "fraction", config=None, batch_size: int | None = None):
        super().__init__(batch_size=batch_size)
        if mode not in MODES:
            raise ValueError(f"unknown shapes_video mode {mode!r}; use one of {MODES}")
        from diffalign.shapes import judge, video_judge

        self._judge = video_judge
        self.mode = mode
        self.config = config if config is not None else judge.DEFAULT_CONFIG

    def score_videos(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return verdict_scores(self._judge.judge_videos(videos.detach(), prompts, self.config), self.mode, videos.device)
