"""JPEG (in)compressibility rewards of DDPO (Black et al. 2023).

    size_kB(I) = len(JPEG_q95(round(255 · I))) / 1000
    jpeg_compressibility   = −scale · size_kB
    jpeg_incompressibility = +scale · size_kB

Images are rounded to uint8 and encoded by Pillow at quality 95. Flow-GRPO uses ``scale=1/500``.
Not differentiable; byte counts depend on the libjpeg build behind Pillow.
"""
from __future__ import annotations

import io

import torch

from diffalign.media import tensor_to_pil
from diffalign.scorers.base import Scorer, register_scorer


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """JPEG byte count / 1000 of each ``B×3×H×W`` image in [0, 1]."""
    sizes = []
    for image in tensor_to_pil(images):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class _JPEGSize(Scorer):
    differentiable = False
    needs_prompts = False
    batch_size = 64
    sign = 1.0

    def __init__(self, quality: int = 95, scale: float = 1.0, batch_size: int | None = None, frame_stride: int = 1):
        super().__init__(batch_size=batch_size, frame_stride=frame_stride)
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        self.quality = int(quality)
        self.scale = float(scale)

    def score_images(self, images: torch.Tensor, prompts) -> torch.Tensor:
        return self.sign * self.scale * jpeg_size_kb(images, self.quality).to(images.device)


@register_scorer("jpeg_compressibility")
class JPEGCompressibility(_JPEGSize):
    """``−size_kB`` of the quality-95 JPEG: higher for images that compress well."""

    name = "jpeg_compressibility"
    sign = -1.0


@register_scorer("jpeg_incompressibility")
class JPEGIncompressibility(_JPEGSize):
    """``+size_kB`` of the quality-95 JPEG: higher for detailed, hard-to-compress images."""

    name = "jpeg_incompressibility"
    sign = 1.0
