"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"): a CLIP ViT-H/14 fine-tuned on human preferences.

    PickScore(I, c) = exp(τ) · cos(E_I(I), E_T(c))

with the logit scale ``τ`` read from the checkpoint (≈ log 100). The model is a transformers
``CLIPModel`` (``yuvalkirstain/PickScore_v1``); its tokenizer and image-processor settings come from
the base repository ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (``processor``). Typical values for
Stable-Diffusion-class images are about 18–24.
"""
from __future__ import annotations

from pathlib import Path

import torch

from diffalign.scorers.base import register_scorer
from diffalign.scorers.clip import CLIPSimilarityScorer, TransformersCLIP

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@register_scorer("pickscore")
class PickScore(CLIPSimilarityScorer):
    """``logit_scale.exp() · cos(E_img, E_txt)`` on the PickScore CLIP model."""

    name = "pickscore"

    def __init__(
        self,
        model: str | Path = PICKSCORE_MODEL,
        processor: str | Path | None = PICKSCORE_PROCESSOR,
        device=None,
        dtype=None,
        batch_size: int | None = None,
        frame_stride: int = 1,
    ):
        backbone = TransformersCLIP(model, processor=processor, device=device, dtype=dtype)
        super().__init__(backbone, batch_size=batch_size, frame_stride=frame_stride)

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.backbone.logit_scale() * self.cosine(images, prompts)
