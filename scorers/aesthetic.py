"""LAION aesthetic predictors on CLIP ViT-L/14 image embeddings (prompt-free).

Both read the L2-normalised CLIP image embedding ``ê = E_I(I) / ‖E_I(I)‖``:

* ``aesthetic`` — improved-aesthetic-predictor ("v2", ``sac+logos+ava1-l14-linearMSE.pth``):
  ``score = MLP(ê)`` with layers 768→1024→128→64→16→1 and dropout but no non-linearities, so the
  head is affine at inference. Output on the ~1–10 rating scale (SD-class images ≈ 5–6.5).
* ``aesthetic_v1`` — LAION-AI/aesthetic-predictor (``sa_0_4_vit_l_14_linear.pth``): ``score = w·ê + b``.
  VBench's aesthetic-quality dimension uses this head and divides by 10 (``scale=0.1``).

The CLIP model is ``openai/clip-vit-large-patch14`` (transformers) by default; DDPO/Flow-GRPO use
that model with the v2 head. Head files are read with ``torch.load(weights_only=True)`` or safetensors.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffalign.scorers.base import Scorer, freeze, load_state_dict_file, register_scorer, resolve_file
from diffalign.scorers.clip import load_backbone

AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
HEAD_FILES = {"v2": "sac+logos+ava1-l14-linearMSE.pth", "v1": "sa_0_4_vit_l_14_linear.pth"}


class AestheticMLP(nn.Module):
    """The v2 head; module names (``layers.0/2/4/6/7``) match the released state dict."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


def load_head(source, version: str) -> nn.Module:
    if version not in HEAD_FILES:
        raise ValueError(f"unknown aesthetic head version {version!r}; use 'v1' or 'v2'")
    if source is None:
        raise ValueError(
            f"aesthetic {version} needs head=<path to {HEAD_FILES[version]} (a file, a folder holding it, "
            f"or a hub 'org/repo/{HEAD_FILES[version]}')>"
        )
    state = load_state_dict_file(resolve_file(source, HEAD_FILES[version]))
    if version == "v2":
        if "layers.0.weight" not in state:
            raise ValueError(f"{source}: not an improved-aesthetic-predictor state dict (no layers.0.weight)")
        head = AestheticMLP(state["layers.0.weight"].shape[1])
    else:
        if "weight" not in state:
            raise ValueError(f"{source}: not a linear aesthetic head (no 'weight')")
        head = nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return head


@register_scorer("aesthetic")
class AestheticScore(Scorer):
    """``scale · head(E_I / ‖E_I‖)`` on a CLIP image encoder; see the module docstring."""

    name = "aesthetic"
    differentiable = True
    needs_prompts = False
    version = "v2"

    def __init__(
        self,
        head: str | Path | None = None,
        clip_model: str | Path = AESTHETIC_CLIP,
        backend: str = "auto",
        processor: str | Path | None = None,
        pretrained: str | None = None,
        scale: float = 1.0,
        device=None,
        dtype=None,
        batch_size: int | None = None,
        frame_stride: int = 1,
    ):
        super().__init__(batch_size=batch_size, frame_stride=frame_stride)
        # the head first: a missing head file fails before the CLIP model loads; it stays float32
        self.head = freeze(load_head(head, self.version), device)
        self.backbone = load_backbone(clip_model, backend, processor=processor, pretrained=pretrained, device=device, dtype=dtype)
        self.scale = float(scale)

    def score_images(self, images: torch.Tensor, prompts) -> torch.Tensor:
        embeds = self.backbone.encode_images(images)
        expected = self.head.layers[0].in_features if isinstance(self.head, AestheticMLP) else self.head.in_features
        if embeds.shape[-1] != expected:
            raise ValueError(f"aesthetic head expects {expected}-d CLIP embeddings, the CLIP model gives {embeds.shape[-1]}-d")
        return self.scale * self.head(embeds).squeeze(-1)


@register_scorer("aesthetic_v1")
class AestheticScoreV1(AestheticScore):
    """The original LAION linear head (VBench's aesthetic quality uses ``scale=0.1``)."""

    name = "aesthetic_v1"
    version = "v1"
