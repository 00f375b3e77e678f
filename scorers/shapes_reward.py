"""``shapes_reward``: the learnt, differentiable ShapesWorld reward (:mod:`diffalign.shapes.reward`).

``score = sigmoid(f(image, caption))`` in [0, 1], a proxy of the judge's dense score (the ``shapes``
scorer) trained by regression on judged rendered and generated images. Gradients flow to the input
images (they are resized to 32×32 on tensors when they differ), so reward backpropagation can optimise
it; the judge stays the gold metric it can be checked against (``eval.gold = "shapes"``).

``model`` is a folder written by ``python -m diffalign.shapes.reward train`` (default: the shipped
``assets/models/shapes-reward``). Prompts are ShapesWorld captions.
"""
from __future__ import annotations

from pathlib import Path

import torch

from diffalign.scorers.base import Scorer, freeze, register_scorer


def _shipped() -> str:
    from diffalign.assets_path import asset_path

    return str(asset_path("models", "shapes-reward"))  # diffalign.shapes.reward.shipped_path(), without its imports


@register_scorer("shapes_reward")
class ShapesRewardScore(Scorer):
    """Learnt ShapesWorld reward; see the module docstring."""

    name = "shapes_reward"
    differentiable = True
    batch_size = 256

    def __init__(self, model: str | Path = _shipped(), device: str | torch.device | None = None,
                 batch_size: int | None = None, frame_stride: int = 1):
        super().__init__(batch_size=batch_size, frame_stride=frame_stride)
        from diffalign.shapes.reward import ShapesRewardModel

        self.model = freeze(ShapesRewardModel.from_pretrained(model), device=device)

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.model.score(images.float(), prompts)
