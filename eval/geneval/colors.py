"""GenEval's colour classifier: zero-shot CLIP over the ten colours, on each object cut out by its mask.

For each object (as ``evaluate_images.py`` with ``clip_benchmark``'s zero-shot classifier):

1. the image is composited through the object's mask onto a ``#999`` canvas (``background``;
   ``"original"`` keeps the image), then cropped to the object's box (PIL rounds the box);
2. the crop goes through the CLIP model's own (PIL) evaluation transform;
3. class weights: for each colour ``c``, the three templates "a photo of a {c} {object}", "a photo
   of a {c}-colored {object}", "a photo of a {c} object" are embedded and L2-normalised, averaged and
   renormalised;
4. ``colour = argmax_c <normalised image feature, w_c>``.

Default model: open_clip ``ViT-L-14`` with the ``openai`` weights; ``model`` may also be an open_clip
folder (``open_clip_config.json`` + weights), ``local-dir:``/``hf-hub:`` spec, and ``pretrained`` a
weights file. GenEval runs CLIP under CUDA autocast; this runs in the model's dtype (fp32 by default).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from diffalign.eval.detection import Detection

from .rules import COLORS, ColorClassifier

TEMPLATES: tuple[str, ...] = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")
DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED = "ViT-L-14", "openai"


def object_crop(image: Image.Image, detection: Detection, background: str = "#999", crop: bool = True) -> Image.Image:
    """The object pasted through its mask onto ``background`` (or the original image), cropped to its box."""
    image = image.convert("RGB")
    if detection.mask is not None:
        mask = np.asarray(detection.mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask of shape {mask.shape} does not fit an image of {image.height}×{image.width}")
        blank = image.copy() if background == "original" else Image.new("RGB", image.size, color=background)
        image = Image.composite(image, blank, Image.fromarray(mask))
    if crop:
        image = image.crop(tuple(float(v) for v in detection.box[:4]))
    return image


class CLIPColorClassifier:
    """``classifier.classify(image, objects, classname) -> colours``; ``for_image(image)`` binds an
    image and gives the ``classify_colors(objects, classname)`` the rule engine takes."""

    def __init__(
        self,
        model: str | Path = DEFAULT_CLIP_MODEL,
        pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        device: str | torch.device | None = None,
        colors: Sequence[str] = COLORS,
        templates: Sequence[str] = TEMPLATES,
        background: str = "#999",
        crop: bool = True,
        batch_size: int = 16,
    ):
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        from diffalign.scorers.clip import OpenCLIP

        if Path(str(model)).is_dir() or str(model).startswith(("local-dir:", "hf-hub:")):
            pretrained = None  # the folder holds its weights
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backbone = OpenCLIP(model, pretrained=pretrained, device=device)
        self.device = device
        cfg = open_clip.get_model_preprocess_cfg(self.backbone.model)
        self.transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        self.colors = tuple(colors)
        self.templates = tuple(templates)
        if background != "original":
            Image.new("RGB", (1, 1), color=background)  # fail now on an unknown colour
        self.background = background
        self.crop = crop
        self.batch_size = batch_size
        self._weights: dict[str, torch.Tensor] = {}
        self.description = f"open_clip {model}" + (f" {pretrained}" if pretrained else "")

    @torch.no_grad()
    def class_weights(self, classname: str) -> torch.Tensor:
        """``D×len(colors)`` zero-shot weights for objects of ``classname`` (cached)."""
        if classname not in self._weights:
            columns = []
            for colour in self.colors:
                embeddings = self.backbone.encode_texts([t.format(c=colour, obj=classname) for t in self.templates])
                mean = embeddings.mean(0)
                columns.append(mean / mean.norm())
            self._weights[classname] = torch.stack(columns, dim=1)
        return self._weights[classname]

    @torch.no_grad()
    def classify(self, image: Image.Image, objects: Sequence[Detection], classname: str) -> list[str]:
        if not objects:
            return []
        weights = self.class_weights(classname)
        dtype = next(self.backbone.model.parameters()).dtype
        predictions: list[str] = []
        for start in range(0, len(objects), self.batch_size):
            crops = [object_crop(image, d, self.background, self.crop) for d in objects[start : start + self.batch_size]]
            pixels = torch.stack([self.transform(c) for c in crops]).to(self.device, dtype)
            features = torch.nn.functional.normalize(self.backbone.model.encode_image(pixels).float(), dim=-1)
            logits = 100.0 * features @ weights
            predictions.extend(self.colors[i] for i in logits.argmax(1).tolist())
        return predictions

    def for_image(self, image: Image.Image) -> ColorClassifier:
        return lambda objects, classname: self.classify(image, objects, classname)


__all__ = ["CLIPColorClassifier", "DEFAULT_CLIP_MODEL", "DEFAULT_CLIP_PRETRAINED", "TEMPLATES", "object_crop"]
