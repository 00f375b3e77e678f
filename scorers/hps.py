"""HPSv2 / HPSv2.1 (Wu et al. 2023, "Human Preference Score v2"): open_clip ViT-H-14 fine-tuned on HPD v2.

    HPS(I, c) = cos(E_I(letterbox(I)), E_T(c))

The image is letterboxed (longest side to 224 bicubic, zero padding centred) rather than
centre-cropped; the logit scale is not applied. Published tables multiply by 100 (v2.0 ≈ 27–28 for
SDXL-class models, v2.1 ≈ 25–31; scores of the two versions are not comparable).

The architecture is built with ``open_clip.create_model("ViT-H-14", pretrained=None)`` — the base
LAION weights are not fetched — and the HPS checkpoint (``xswu/HPSv2``: ``HPS_v2_compressed.pt`` or
``HPS_v2.1_compressed.pt``, ``{"state_dict": ...}``) is read with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from diffalign.scorers.base import load_state_dict_file, register_scorer, resolve_file
from diffalign.scorers.clip import CLIPSimilarityScorer, OpenCLIP

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


@register_scorer("hps")
class HPSv2(CLIPSimilarityScorer):
    """``cos(E_img, E_txt)`` of the HPSv2 model; ``version`` is ``"v2.0"`` or ``"v2.1"``."""

    name = "hps"

    def __init__(
        self,
        version: str = "v2.1",
        checkpoint: str | Path | None = None,
        model: str | Path = "ViT-H-14",
        device=None,
        dtype=None,
        batch_size: int | None = None,
        frame_stride: int = 1,
    ):
        version = {"2": "v2.0", "v2": "v2.0", "2.0": "v2.0", "2.1": "v2.1"}.get(str(version), str(version))
        if version not in HPS_FILES:
            raise ValueError(f"unknown HPS version {version!r}; use 'v2.0' or 'v2.1'")
        state = load_state_dict_file(resolve_file(checkpoint or HPS_REPO, HPS_FILES[version]))
        backbone = OpenCLIP(model, state_dict=state, resize_mode="letterbox", device=device, dtype=dtype)
        super().__init__(backbone, batch_size=batch_size, frame_stride=frame_stride)
        self.version = version

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.cosine(images, prompts)
