"""GenEval's detector: Mask2Former instance segmentation through transformers, scored as mmdet does.

GenEval runs mmdet 2.x's Mask2Former Swin-S (COCO instance). Here the same architecture loads with
``Mask2FormerForUniversalSegmentation.from_pretrained`` (default
``facebook/mask2former-swin-small-coco-instance``, or a local folder). That checkpoint was trained
separately from the mmdet one, so scores can differ slightly from published GenEval numbers.

Pipeline, as mmdet's test pipeline and ``MaskFormerFusionHead.instance_postprocess``:

1. keep-ratio resize to fit ``scale = (1333, 800)``: factor ``min(1333 / long side, 800 / short side)``,
   new side ``int(side · factor + 0.5)``, bilinear on the uint8 image (OpenCV when installed, as
   mmdet; else torch, within one level); normalise with ImageNet
   mean/std (0-255 RGB); zero-pad bottom/right to a multiple of 32;
2. mask logits upsampled (bilinear) to the padded size, cropped to the resized image, upsampled to
   the original size;
3. ``p = softmax(class logits)`` without the no-object column; the top ``max_per_image`` (100) of
   ``p`` over queries × classes; mask = logit > 0; ``score = p · mean(sigmoid(logit) over the mask)``;
   box = the mask's extent ``(x_first, y_first, x_last + 1, y_last + 1)`` (zeros for an empty mask).

Class ``i`` of the checkpoint is GenEval's ``object_names.txt`` line ``i`` (COCO's 80 classes in
order). Detections come back unfiltered; the GenEval rules threshold them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from diffalign.assets_path import asset_path
from diffalign.eval.detection import Detection

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
#: mmdet's ``img_norm_cfg`` (RGB, 0-255)
MMDET_MEAN = (123.675, 116.28, 103.53)
MMDET_STD = (58.395, 57.12, 57.375)


def object_names() -> list[str]:
    """GenEval's 80 class names in detector order (shipped ``object_names.txt``)."""
    path = asset_path("prompts", "geneval", "object_names.txt")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def rescale_size(height: int, width: int, scale: tuple[int, int] = (1333, 800)) -> tuple[int, int]:
    """mmcv's keep-ratio ``rescale_size``: fit the long side in ``max(scale)``, the short one in ``min(scale)``."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize_uint8(pixels: torch.Tensor, size: tuple[int, int], backend: str) -> torch.Tensor:
    """Bilinear resize of ``B×3×H×W`` uint8 values (as floats) -> rounded uint8 values.

    ``cv2`` is mmdet's own ``cv2.resize(INTER_LINEAR)`` (exact); ``torch`` is the same interpolation
    in floating point, which differs from cv2's fixed-point arithmetic by one level on ~12% of the
    values; ``auto`` takes cv2 when OpenCV is installed.
    """
    if backend == "auto":
        try:
            import cv2  # noqa: F401
        except ImportError:
            backend = "torch"
        else:
            backend = "cv2"
    if backend == "cv2":
        import cv2
        import numpy as np

        arrays = pixels.permute(0, 2, 3, 1).to("cpu", torch.uint8).numpy()
        resized = np.stack([cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for a in arrays])
        return torch.from_numpy(resized).permute(0, 3, 1, 2).to(pixels.device, torch.float32)
    if backend != "torch":
        raise ValueError(f"unknown resize backend {backend!r}; use 'auto', 'cv2' or 'torch'")
    out = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=False)
    return out.round().clamp(0, 255)


def preprocess(
    images: torch.Tensor, scale: tuple[int, int] = (1333, 800), size_divisor: int = 32, resize_backend: str = "auto"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """``B×3×H×W`` in [0, 1] (one size) -> normalised, padded pixels and the resized ``(h, w)``."""
    pixels = (images.float().clamp(0, 1) * 255).round()  # the uint8 image mmdet reads
    new_h, new_w = rescale_size(images.shape[-2], images.shape[-1], scale)
    if (new_h, new_w) != tuple(images.shape[-2:]):
        pixels = _resize_uint8(pixels, (new_h, new_w), resize_backend)
    mean = torch.tensor(MMDET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(MMDET_STD, device=pixels.device).view(1, 3, 1, 1)
    pixels = (pixels - mean) / std
    pad_h, pad_w = (-new_h) % size_divisor, (-new_w) % size_divisor
    return F.pad(pixels, (0, pad_w, 0, pad_h), value=0.0), (new_h, new_w)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``N×H×W`` bool -> ``N×4`` boxes ``(x_first, y_first, x_last + 1, y_last + 1)``; 0 for empty masks."""
    boxes = torch.zeros(masks.shape[0], 4, device=masks.device)
    if masks.shape[0] == 0:
        return boxes
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # N×W, N×H
    width, height = masks.shape[2], masks.shape[1]
    x_index = torch.arange(width, device=masks.device).float()
    y_index = torch.arange(height, device=masks.device).float()
    big = float(max(width, height)) + 1
    boxes[:, 0] = torch.where(cols, x_index, big).amin(1)
    boxes[:, 1] = torch.where(rows, y_index, big).amin(1)
    boxes[:, 2] = torch.where(cols, x_index, -1.0).amax(1) + 1
    boxes[:, 3] = torch.where(rows, y_index, -1.0).amax(1) + 1
    empty = ~cols.any(1)
    boxes[empty] = 0
    return boxes


def instance_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded: tuple[int, int],
    resized: tuple[int, int],
    original: tuple[int, int],
    max_per_image: int = 100,
    query_chunk: int = 20,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: ``Q×(C+1)`` class logits and ``Q×h×w`` mask logits, the ``padded`` input size, the
    ``resized`` image inside it and the ``original`` size -> ``labels K``, ``scores K``, ``boxes K×4``, ``masks K×H×W`` (bool), highest ``p`` first."""
    num_classes = class_logits.shape[1] - 1
    probs = class_logits.float().softmax(-1)[:, :-1]
    top, index = probs.flatten().topk(min(max_per_image, probs.numel()), sorted=True)
    labels, queries = index % num_classes, index // num_classes
    unique, inverse = torch.unique(queries, return_inverse=True)
    masks, mask_scores = [], []
    for chunk in unique.split(query_chunk):  # full-size masks of every query at once can be large
        logits = F.interpolate(mask_logits[chunk][:, None].float(), size=padded, mode="bilinear", align_corners=False)
        logits = logits[..., : resized[0], : resized[1]]
        logits = F.interpolate(logits, size=original, mode="bilinear", align_corners=False)[:, 0]
        binary = logits > 0
        mask_scores.append((logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6))
        masks.append(binary)
    query_masks = torch.cat(masks)
    scores = top * torch.cat(mask_scores)[inverse]
    kept_masks = query_masks[inverse]
    return labels, scores, mask_boxes(kept_masks), kept_masks


class Mask2FormerDetector:
    """``detector(images B×3×H×W in [0, 1]) -> [{class name: [Detection, ...]}, ...]`` (unfiltered).

    ``model``: hub id or local folder of a transformers Mask2Former COCO instance checkpoint.
    ``class_names``: one per checkpoint class (default: GenEval's ``object_names.txt``).
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_DETECTOR,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        scale: tuple[int, int] = (1333, 800),
        max_per_image: int = 100,
        class_names: Sequence[str] | None = None,
        resize_backend: str = "auto",
    ):
        from transformers import Mask2FormerForUniversalSegmentation

        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f"scale must be two positive sides (long, short), got {scale!r}")
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(str(model), **({"dtype": dtype} if dtype else {}))
        self.model.eval().requires_grad_(False)
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.class_names = list(class_names) if class_names is not None else object_names()
        if len(self.class_names) != self.model.config.num_labels:
            raise ValueError(
                f"the detector {model} has {self.model.config.num_labels} classes but {len(self.class_names)} class names "
                "were given (GenEval needs a COCO instance checkpoint with 80 classes)"
            )
        self.scale = (int(max(scale)), int(min(scale)))
        self.max_per_image = int(max_per_image)
        self.resize_backend = resize_backend
        self.description = f"Mask2Former {model} (transformers), scale {self.scale}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[dict[str, list[Detection]]]:
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be B×3×H×W in [0, 1], got shape {tuple(images.shape)}")
        pixels, resized = preprocess(images.to(self.device), self.scale, resize_backend=self.resize_backend)
        dtype = next(self.model.parameters()).dtype
        outputs = self.model(pixel_values=pixels.to(dtype))
        results = []
        for class_logits, mask_logits in zip(outputs.class_queries_logits, outputs.masks_queries_logits):
            labels, scores, boxes, masks = instance_postprocess(
                class_logits, mask_logits, tuple(pixels.shape[-2:]), resized, tuple(images.shape[-2:]), self.max_per_image
            )
            per_class: dict[str, list[Detection]] = {}
            masks_np = masks.cpu().numpy()
            for label, score, box, mask in zip(labels.tolist(), scores.tolist(), boxes.cpu().tolist(), masks_np):
                per_class.setdefault(self.class_names[label], []).append(Detection(box=tuple(box), score=score, mask=mask))
            results.append(per_class)
        return results


__all__ = [
    "DEFAULT_DETECTOR", "MMDET_MEAN", "MMDET_STD", "Mask2FormerDetector", "instance_postprocess", "mask_boxes",
    "object_names", "preprocess", "rescale_size",
]
