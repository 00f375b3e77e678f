"""Scorer preprocessing on tensors, so gradients reach the input media.

Official preprocessors (HF ``CLIPImageProcessor``, open_clip's PIL transforms) go through
PIL/numpy and break the autograd graph. These functions reproduce them on ``B×C×H×W`` float tensors
in [0, 1]; tests measure the remaining drift against the official processors.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

#: OpenAI CLIP statistics, also used by the LAION ViT-H-14 (PickScore, HPSv2) and ImageReward.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resize(images: torch.Tensor, size: tuple[int, int], interpolation: str, antialias: bool) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if interpolation not in {"bicubic", "bilinear", "nearest", "area"}:
        raise ValueError(f"unknown interpolation {interpolation!r}")
    options = {"align_corners": False} if interpolation in {"bicubic", "bilinear"} else {}
    if interpolation in {"bicubic", "bilinear"}:
        options["antialias"] = antialias
    dtype = images.dtype
    # interpolate has no half-precision CPU kernels for every mode; resize in float32.
    out = F.interpolate(images.float(), size=size, mode=interpolation, **options)
    return out.to(dtype)


def resize_center_crop(
    images: torch.Tensor,
    size: int,
    interpolation: str = "bicubic",
    antialias: bool = True,
    crop_size: int | None = None,
) -> torch.Tensor:
    """Resize the shortest side to ``size`` (long side ``int(size·long/short)``), centre-crop
    ``crop_size×crop_size`` (default ``size``).

    Matches CLIP's ``Resize(size)`` + ``CenterCrop(size)``. Bicubic overshoot is clamped to [0, 1],
    as a uint8 round trip in the official path would do.
    """
    crop = size if crop_size is None else crop_size
    height, width = images.shape[-2:]
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(size * long / short)
    new_size = (size, new_long) if height <= width else (new_long, size)
    images = _resize(images, new_size, interpolation, antialias)
    if interpolation == "bicubic":
        images = images.clamp(0, 1)
    height, width = images.shape[-2:]
    if crop > min(height, width):
        raise ValueError(f"crop size {crop} is larger than the resized image {height}×{width}")
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return images[..., top : top + crop, left : left + crop]


def letterbox(images: torch.Tensor, size: int, interpolation: str = "bicubic", antialias: bool = True, fill: float = 0.0) -> torch.Tensor:
    """Resize the *longest* side to ``size`` and pad with ``fill`` to ``size×size`` (HPSv2's ``ResizeMaxSize``).

    The image is centred: the left/top pad is ``floor(pad / 2)``.
    """
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_size = (round(height * scale), round(width * scale))
    images = _resize(images, new_size, interpolation, antialias)
    if interpolation == "bicubic":
        images = images.clamp(0, 1)
    pad_h, pad_w = size - new_size[0], size - new_size[1]
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)


def normalize(images: torch.Tensor, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    mode: str = "crop",
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """The CLIP-family pixel pipeline: resize (``mode="crop"`` shortest side + centre crop, or
    ``mode="letterbox"``), then normalise."""
    if mode == "crop":
        images = resize_center_crop(images, size, interpolation)
    elif mode == "letterbox":
        images = letterbox(images, size, interpolation)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; use 'crop' or 'letterbox'")
    return normalize(images, mean, std)
