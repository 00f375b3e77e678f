"""CLIP back-ends shared by the CLIP-family scorers, and the CLIP score itself.

Two back-ends load real checkpoints and expose the same two calls, both differentiable w.r.t. the
input pixels because preprocessing runs on tensors (:mod:`diffalign.scorers.preprocess`):

* :class:`TransformersCLIP`: ``transformers.CLIPModel.from_pretrained(hub id or folder)``, with the
  tokenizer and image-processor settings read from ``processor`` (default: the model folder).
* :class:`OpenCLIP`: ``open_clip.create_model(name, pretrained=tag or file)``, or an open_clip
  folder (``open_clip_config.json`` + weights) given as a path, ``local-dir:PATH`` or ``hf-hub:ID``.

CLIP score (Hessel et al. 2021, torchmetrics ``CLIPScore``)::

    CLIPScore(I, c) = w · max(cos(E_I(I), E_T(c)), 0),   w = 100

torchmetrics clamps the *batch mean* at 0; this scorer returns per-item scores and clamps each one
(``clamp=False`` returns the raw ``100·cos``, whose mean clamped at 0 is torchmetrics' number).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from diffalign.scorers.base import Scorer, freeze, register_scorer, resolve_dtype
from diffalign.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, letterbox, normalize, resize_center_crop

_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "bicubic", 4: "bicubic", 5: "bicubic"}


def _pooled(output) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output object in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPBackbone(nn.Module):
    """A dual encoder with tensor preprocessing: ``encode_images`` / ``encode_texts`` -> unit vectors."""

    #: pixel pipeline: side length, "crop" (shortest side + centre crop) or "letterbox", mean/std
    image_size: int = 224
    crop_size: int = 224
    resize_mode: str = "crop"
    interpolation: str = "bicubic"
    mean: Sequence[float] = OPENAI_CLIP_MEAN
    std: Sequence[float] = OPENAI_CLIP_STD

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` in [0, 1] -> normalised pixels in the model's dtype."""
        if self.resize_mode == "letterbox":
            pixels = letterbox(images, self.crop_size, self.interpolation)
        else:
            pixels = resize_center_crop(images, self.image_size, self.interpolation, crop_size=self.crop_size)
        dtype = next(self.parameters()).dtype
        return normalize(pixels.float(), self.mean, self.std).to(dtype)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(images))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Already preprocessed, normalised pixels -> unit image embeddings (benchmarks that need
        their own pixel pipeline, such as VBench's, call this)."""
        raise NotImplementedError

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor:
        raise NotImplementedError

    def encode_unique_texts(self, prompts: list[str]) -> torch.Tensor:
        """Embed each distinct prompt once (groups and video frames repeat prompts)."""
        unique = list(dict.fromkeys(prompts))
        embeds = self.encode_texts(unique)
        index = torch.tensor([unique.index(p) for p in prompts], device=embeds.device)
        return embeds[index]


class TransformersCLIP(CLIPBackbone):
    """``transformers.CLIPModel`` + its tokenizer and image-processor settings."""

    def __init__(self, model: str | Path, processor: str | Path | None = None, device=None, dtype=None):
        super().__init__()
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        dtype = resolve_dtype(dtype)
        self.model = CLIPModel.from_pretrained(str(model), **({"dtype": dtype} if dtype else {}))
        freeze(self.model, device, dtype)
        source = str(processor or model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            image_processor = CLIPImageProcessor.from_pretrained(source)
        except OSError as err:
            raise OSError(
                f"cannot read the CLIP tokenizer/image processor from {source!r}; pass processor=<hub id or "
                f"folder> (PickScore uses laion/CLIP-ViT-H-14-laion2B-s32B-b79K): {err}"
            ) from err
        self.max_length = min(int(self.model.config.text_config.max_position_embeddings), self.tokenizer.model_max_length)
        self._configure_pixels(image_processor)

    def _configure_pixels(self, processor) -> None:
        size = dict(processor.size)
        if "shortest_edge" in size:
            self.image_size = int(size["shortest_edge"])
        else:  # a square resize
            self.image_size = int(size["height"])
        crop = dict(processor.crop_size or {}) if processor.do_center_crop else {}
        self.crop_size = int(crop.get("height", self.image_size))
        resample = processor.resample
        self.interpolation = _PIL_RESAMPLE.get(int(getattr(resample, "value", resample)), "bicubic")
        self.mean = tuple(processor.image_mean) if processor.do_normalize else (0.0, 0.0, 0.0)
        self.std = tuple(processor.image_std) if processor.do_normalize else (1.0, 1.0, 1.0)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        features = _pooled(self.model.get_image_features(pixel_values=pixels))
        return nn.functional.normalize(features.float(), dim=-1)

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = {k: v.to(self.model.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        features = _pooled(self.model.get_text_features(**tokens))
        return nn.functional.normalize(features.float(), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.float().exp()


class OpenCLIP(CLIPBackbone):
    """An ``open_clip`` model; ``model`` is a model name, ``local-dir:``/``hf-hub:`` spec, or a folder."""

    def __init__(
        self,
        model: str | Path,
        pretrained: str | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
        resize_mode: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        import open_clip

        name = open_clip_name(model)
        self.model = open_clip.create_model(name, pretrained=pretrained, load_weights=state_dict is None, pretrained_text=False)
        if state_dict is not None:
            missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise ValueError(f"checkpoint does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        freeze(self.model, device, dtype)
        self.tokenizer = open_clip.get_tokenizer(name)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        self.image_size = self.crop_size = int(size if isinstance(size, int) else size[0])
        self.mean, self.std = tuple(cfg.get("mean", OPENAI_CLIP_MEAN)), tuple(cfg.get("std", OPENAI_CLIP_STD))
        self.interpolation = cfg.get("interpolation", "bicubic")
        mode = resize_mode or {"shortest": "crop", "longest": "letterbox"}.get(cfg.get("resize_mode", "shortest"))
        if mode not in {"crop", "letterbox"}:
            raise ValueError(f"unsupported resize mode {cfg.get('resize_mode')!r}; pass resize_mode='crop' or 'letterbox'")
        self.resize_mode = mode

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return nn.functional.normalize(self.model.encode_text(self.tokenizer(prompts).to(device)).float(), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.float().exp()


def open_clip_name(model: str | Path) -> str:
    """A folder holding ``open_clip_config.json`` becomes ``local-dir:PATH``; other names pass through."""
    text = str(model)
    if not text.startswith(("hf-hub:", "local-dir:")) and Path(text).is_dir():
        return f"local-dir:{text}"
    return text


def is_open_clip(model: str | Path) -> bool:
    text = str(model)
    if text.startswith(("hf-hub:", "local-dir:")):
        return True
    if Path(text).is_dir():
        return (Path(text) / "open_clip_config.json").exists()
    import open_clip

    return text in open_clip.list_models()


def load_backbone(
    model: str | Path,
    backend: str = "auto",
    processor: str | Path | None = None,
    pretrained: str | None = None,
    device=None,
    dtype=None,
) -> CLIPBackbone:
    """Build the right back-end: ``backend`` is ``"transformers"``, ``"open_clip"`` or ``"auto"``."""
    if backend == "auto":
        backend = "open_clip" if is_open_clip(model) else "transformers"
    if backend == "open_clip":
        return OpenCLIP(model, pretrained=pretrained, device=device, dtype=dtype)
    if backend == "transformers":
        return TransformersCLIP(model, processor=processor, device=device, dtype=dtype)
    raise ValueError(f"unknown CLIP backend {backend!r}; use 'transformers', 'open_clip' or 'auto'")


class CLIPSimilarityScorer(Scorer):
    """``scale · cos(E_img, E_txt)`` on a :class:`CLIPBackbone`; subclasses choose the scale."""

    differentiable = True

    def __init__(self, backbone: CLIPBackbone, batch_size: int | None = None, frame_stride: int = 1):
        super().__init__(batch_size=batch_size, frame_stride=frame_stride)
        self.backbone = backbone

    def cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image_embeds = self.backbone.encode_images(images)
        text_embeds = self.backbone.encode_unique_texts(prompts)
        return (image_embeds * text_embeds).sum(dim=-1)


@register_scorer("clip")
class CLIPScore(CLIPSimilarityScorer):
    """CLIP score ``100 · max(cos(E_I, E_T), 0)`` (torchmetrics' weight; ``clamp=False`` keeps negatives).

    ``model``: HF id/folder (transformers ``CLIPModel``) or open_clip name/folder (``backend`` picks;
    ``pretrained`` is the open_clip tag or weights file, e.g. ``"ViT-L-14"`` + ``"openai"``).
    """

    name = "clip"

    def __init__(
        self,
        model: str | Path = "openai/clip-vit-large-patch14",
        backend: str = "auto",
        processor: str | Path | None = None,
        pretrained: str | None = None,
        weight: float = 100.0,
        clamp: bool = True,
        device=None,
        dtype=None,
        batch_size: int | None = None,
        frame_stride: int = 1,
    ):
        backbone = load_backbone(model, backend, processor=processor, pretrained=pretrained, device=device, dtype=dtype)
        super().__init__(backbone, batch_size=batch_size, frame_stride=frame_stride)
        self.weight = float(weight)
        self.clamp = clamp

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        score = self.weight * self.cosine(images, prompts)
        return score.clamp(min=0) if self.clamp else score
