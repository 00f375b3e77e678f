"""VBench's dimensions, with VBench's own preprocessing (Vchitect/VBench @45e79ec, wheel 0.1.5).

Frames are ``T×3×H×W`` uint8 tensors (RGB) as VBench's decord loader gives them; every tensor
resize runs on uint8 with ``antialias=False``, as VBench's transforms do (so values are rounded back
to uint8 before ``/255``). A dimension turns one video into a :class:`VideoScore` ``(total, count)``;
the dimension's score over a run is ``Σ total / Σ count``, which reproduces each of VBench's
averages: frame-pair-weighted (subject/background consistency), frame-weighted (appearance style,
object class, multiple objects, spatial relationship) or video-weighted (the rest, ``count = 1``).

Formulas (``f_i``: L2-normalised features of frame ``i``):

* subject_consistency (DINO ViT-B/16 CLS token, shortest side 224 bilinear, ImageNet mean/std) and
  background_consistency (CLIP ViT-B/32, shortest side 224 bicubic + centre crop, CLIP mean/std):
  ``Σ_{i≥1} ½[max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))]`` over ``T - 1`` pairs.
* temporal_flickering: ``(255 - mean_i mean|x_i - x_{i+1}|) / 255`` on the uint8 frames.
* dynamic_degree: frames every ``round(fps / 8)``; RAFT (torchvision ``raft_large``, C_T_V1 weights =
  raft-things, 20 updates, input ``2x/255 - 1`` replicate-padded to a multiple of 8); per pair the
  mean of the top 5 % flow magnitudes of the padded field; the video moves if at least
  ``round(4·n/16)`` of them exceed ``6·min(H, W)/256``; score = share of moving videos.
* aesthetic_quality: LAION v1 linear head on L2-normalised CLIP ViT-L/14 features, ``/10``, mean over
  frames, then over videos.
* imaging_quality: pyiqa MUSIQ (SPAQ), longer side resized to 512 if larger, ``/255``; mean over frames,
  over videos, ``/100``.
* appearance_style: CLIP ViT-B/32 on the PIL path (PIL bicubic resize, crop); per frame
  ``logit_scale·cos(image, style) / 100``; mean over all frames.
* object_class / multiple_objects / color / spatial_relationship: 16 frames at the middle of 16 equal
  segments; a detector stands in for GRiT (see :class:`DetectorDimension`).
"""
from __future__ import annotations

import math
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diffalign.eval.detection import Detection, Detector
from diffalign.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize

from .suite import VBenchError, VBenchPrompt

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DETECTOR_THRESHOLD = 0.5  # GRiT's ROI score threshold in VBench
DETECTOR_FRAMES = 16
#: colour words VBench looks for in GRiT's dense captions
VBENCH_COLOR_WORDS = ("white", "red", "pink", "blue", "silver", "purple", "orange", "green", "gray", "yellow", "black", "grey")
#: VBench (GRiT, detectron2 COCO names) -> GenEval detector class names where they differ
DETECTOR_ALIASES = {"keyboard": "computer keyboard", "remote": "tv remote"}


class DimensionUnavailable(RuntimeError):
    """A dimension that cannot be computed here; ``str(err)`` is the reason."""


@dataclass
class Video:
    """One video's frames (``T×3×H×W`` uint8, RGB) and frame rate."""

    frames: torch.Tensor
    fps: float | None = None


@dataclass
class VideoScore:
    total: float
    count: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float | None:
        return self.total / self.count if self.count else None


class Dimension(Protocol):
    name: str

    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore: ...


# -- VBench's frame pipelines ----------------------------------------------------------------
def _resize_uint8(frames: torch.Tensor, size: int | list[int], interpolation: str) -> torch.Tensor:
    """torchvision ``Resize(size, antialias=False)`` on uint8 frames (result rounded to uint8)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[interpolation]
    return resize(frames, size if isinstance(size, list) else [size], interpolation=mode, antialias=False)


def dino_pixels(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """VBench ``dino_transform``: shortest side to ``size`` (bilinear, no crop), /255, ImageNet stats."""
    return normalize(_resize_uint8(frames, size, "bilinear").float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def clip_pixels(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """VBench ``clip_transform``: shortest side to ``size`` (bicubic), centre crop, /255, CLIP stats."""
    from torchvision.transforms.functional import center_crop

    resized = center_crop(_resize_uint8(frames, size, "bicubic"), [size, size])
    return normalize(resized.float() / 255.0, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def clip_pixels_pil(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """VBench ``clip_transform_Image``: PIL bicubic resize of the shortest side, centre crop, CLIP stats."""
    from PIL import Image

    out = []
    for frame in frames.permute(0, 2, 3, 1).cpu().numpy():
        image = Image.fromarray(frame)
        width, height = image.size
        if width <= height:
            new_size = (size, int(size * height / width))
        else:
            new_size = (int(size * width / height), size)
        image = image.resize(new_size, Image.BICUBIC)
        left, top = int(round((new_size[0] - size) / 2.0)), int(round((new_size[1] - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1))
    return normalize(torch.stack(out).float() / 255.0, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def middle_frame_indices(num_frames: int, length: int) -> list[int]:
    """VBench ``get_frame_indices(sample="middle")``: the middle of ``num_frames`` equal segments,
    padded with the last index when the video is shorter."""
    count = min(num_frames, length)
    edges = np.linspace(0, length, count + 1).astype(int)
    indices = [int((start + end - 1) // 2) for start, end in zip(edges[:-1], edges[1:])]
    return indices + [indices[-1]] * (num_frames - len(indices))


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(frames[i : i + batch_size]) for i in range(0, frames.shape[0], batch_size)])


# -- formulas ---------------------------------------------------------------------------------
def consistency(features: torch.Tensor) -> VideoScore:
    """``Σ_{i≥1} ½[max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))]`` over ``T - 1`` frame pairs."""
    unit = F.normalize(features.double(), dim=-1)
    previous = (unit[1:] * unit[:-1]).sum(-1).clamp(min=0)
    first = (unit[1:] * unit[:1]).sum(-1).clamp(min=0)
    return VideoScore(float(((previous + first) / 2).sum()), unit.shape[0] - 1)


def flicker(frames: torch.Tensor) -> VideoScore:
    """``(255 - mean_i MAE(x_i, x_{i+1})) / 255`` on uint8 frames."""
    if frames.shape[0] < 2:
        raise VBenchError("temporal_flickering needs at least 2 frames")
    pixels = frames.float()
    mae = (pixels[1:] - pixels[:-1]).abs().flatten(1).mean(1)
    return VideoScore(float((255.0 - mae.double().mean()) / 255.0), 1)


def top_flow_magnitude(flow: torch.Tensor) -> float:
    """Mean of the largest 5 % flow magnitudes (``int(H·W·0.05)`` pixels) of one ``2×H×W`` field."""
    magnitude = flow.double().pow(2).sum(0).sqrt().flatten()
    cut = int(magnitude.numel() * 0.05)
    return float(magnitude.sort(descending=True).values[:cut].mean())


def is_moving(magnitudes: Sequence[float], height: int, width: int, frames: int) -> bool:
    """VBench's ``check_move``: at least ``round(4·frames/16)`` magnitudes above ``6·min(H, W)/256``."""
    threshold = 6.0 * (min(height, width) / 256.0)
    needed = round(4 * (frames / 16.0))
    return len(magnitudes) > 0 and sum(m > threshold for m in magnitudes) >= needed


def box_position_score(relation: str, box1: Sequence[float], box2: Sequence[float], iou_threshold: float = 0.1) -> float:
    """VBench ``get_position_score``: 1 if the centres differ more along the relation's axis and the
    boxes overlap less than ``iou_threshold`` (IoU), ``iou_threshold / IoU`` if they overlap more, else 0.
    Only the axis is checked, not the direction."""
    dx = (box2[0] + box2[2]) / 2 - (box1[0] + box1[2]) / 2
    dy = (box2[1] + box2[3]) / 2 - (box1[1] + box1[3]) / 2
    overlap_w = max(0.0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    overlap_h = max(0.0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    intersection = overlap_w * overlap_h
    union = (box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - intersection
    iou = intersection / union if union > 0 else 0.0
    if relation in "on the right of" or relation in "on the left of":
        along = abs(dx) > abs(dy)
    elif relation in "on the bottom of" or relation in "on the top of":
        along = abs(dy) > abs(dx)
    else:
        return 0.0
    if not along:
        return 0.0
    return 1.0 if iou < iou_threshold else iou_threshold / iou


# -- dimensions with models -------------------------------------------------------------------
def dino_interpolate_pos_encoding(embeddings_module, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINO's own ``interpolate_pos_encoding``: bicubic with ``scale_factor = (side/16 + 0.1) / √N``
    (the 0.1 guards against float error), which maps source coordinates slightly differently from
    transformers' ``size=`` interpolation; bound onto a ``ViTModel`` so features match VBench's."""
    position = embeddings_module.position_embeddings
    patches, positions = embeddings.shape[1] - 1, position.shape[1] - 1
    if patches == positions and height == width:
        return position
    side = math.sqrt(positions)
    dim = embeddings.shape[-1]
    grid = position[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    rows, cols = height // embeddings_module.patch_size + 0.1, width // embeddings_module.patch_size + 0.1
    grid = F.interpolate(grid, scale_factor=(rows / side, cols / side), mode="bicubic")
    return torch.cat((position[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


def load_dino_checkpoint(path: Path):
    """A ``ViTModel`` from DINO's own checkpoint file: keys renamed to the Hugging Face ViT layout,
    written to a temporary folder and loaded with ``from_pretrained`` (which maps that layout onto the
    installed transformers' module names). DINO's heads are 64 wide and its layer-norm eps is 1e-6."""
    import tempfile

    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTModel

    from diffalign.scorers.base import load_state_dict_file

    state = dino_state_dict_to_vit(load_state_dict_file(path))
    hidden = state["embeddings.cls_token"].shape[-1]
    config = ViTConfig(
        hidden_size=hidden, num_hidden_layers=len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")}),
        num_attention_heads=max(1, hidden // 64), intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        image_size=224, patch_size=state["embeddings.patch_embeddings.projection.weight"].shape[-1], layer_norm_eps=1e-6, qkv_bias=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in state.items()}, str(Path(folder) / "model.safetensors"))
        model, info = ViTModel.from_pretrained(folder, add_pooling_layer=False, output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"]:  # never score with silently random weights
        raise KeyError(f"missing {sorted(info['missing_keys'])[:3]}, unexpected {sorted(info['unexpected_keys'])[:3]}")
    return model


def dino_state_dict_to_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original DINO / timm key names (``dino_vitbase16_pretrain.pth``, VBench's local file) ->
    the Hugging Face ViT checkpoint layout; the fused ``qkv`` projection is split into query, key, value."""
    renames = {
        "cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias",
    }
    block = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in renames:
            out[renames[key]] = value
        elif key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            prefix = f"encoder.layer.{index}."
            name, kind = rest.rsplit(".", 1)
            if name == "attn.qkv":
                for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{prefix}attention.attention.{part}.{kind}"] = chunk
            elif name in block:
                out[f"{prefix}{block[name]}.{kind}"] = value
        # the projection head of a full DINO checkpoint is not part of the backbone
    return out


class SubjectConsistency:
    """DINO ViT-B/16 through transformers ``ViTModel``: ``facebook/dino-vitb16`` (the HF port of the
    ``dino_vitb16`` checkpoint VBench loads from torch.hub), a ViT folder, or DINO's own
    ``dino_vitbase16_pretrain.pth``. Feature = final-layernorm CLS token; frames are not cropped, so the
    position grid is interpolated, with DINO's interpolation."""

    name = "subject_consistency"

    def __init__(self, model: str | Path = "facebook/dino-vitb16", device=None, batch_size: int = 32):
        from transformers import ViTModel

        try:
            if Path(str(model)).is_file():
                self.model = load_dino_checkpoint(Path(model))
            else:
                self.model = ViTModel.from_pretrained(str(model), add_pooling_layer=False)
        except OSError as err:
            raise VBenchError(f"subject_consistency: cannot load DINO ViT-B/16 from {model!r} ({err}); pass a local folder") from err
        except (RuntimeError, KeyError) as err:
            raise VBenchError(f"subject_consistency: {model} is not a DINO ViT-B/16 checkpoint ({str(err).splitlines()[0]})") from err
        embeddings = self.model.embeddings
        embeddings.interpolate_pos_encoding = types.MethodType(dino_interpolate_pos_encoding, embeddings)
        self.model.eval().requires_grad_(False).to(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        def encode(chunk: torch.Tensor) -> torch.Tensor:
            pixels = dino_pixels(chunk).to(self.model.device, self.model.dtype)
            return self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 0].float()

        return _batched(encode, frames, self.batch_size)

    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        return consistency(self.features(video.frames))


class BackgroundConsistency:
    """CLIP ViT-B/32 (openai weights; transformers ``openai/clip-vit-base-patch32`` or open_clip
    ``ViT-B-32``) on VBench's tensor CLIP transform."""

    name = "background_consistency"

    def __init__(self, backbone, batch_size: int = 32):
        self.backbone = backbone
        self.batch_size = batch_size

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        device = next(self.backbone.parameters()).device
        return _batched(lambda chunk: self.backbone.encode_pixels(clip_pixels(chunk).to(device)), frames, self.batch_size)

    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        return consistency(self.features(video.frames))


class AppearanceStyle:
    """``logit_scale·cos(E_I(frame), E_T(style)) / 100`` per frame, CLIP ViT-B/32 on the PIL path."""

    name = "appearance_style"

    def __init__(self, backbone, batch_size: int = 32):
        self.backbone = backbone
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        style = item.auxiliary.get(self.name, {}).get("appearance_style")
        if not isinstance(style, str):
            raise VBenchError(f"{item.prompt!r}: appearance_style needs auxiliary_info.appearance_style.appearance_style")
        device = next(self.backbone.parameters()).device
        text = self.backbone.encode_texts([style])
        images = _batched(lambda chunk: self.backbone.encode_pixels(clip_pixels_pil(chunk).to(device)), video.frames, self.batch_size)
        per_frame = (images @ text[0]) * self.backbone.logit_scale() / 100.0
        return VideoScore(float(per_frame.double().sum()), per_frame.numel(), {"frames": per_frame.tolist()})


class TemporalFlickering:
    name = "temporal_flickering"

    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        return flicker(video.frames)


RAFT_FILE = "raft_large_C_T_V1-22a6c225.pth"


def load_raft(weights: str | Path | None = None, device=None) -> torch.nn.Module:
    """torchvision ``raft_large`` with the ``C_T_V1`` weights (FlyingChairs + FlyingThings, the
    raft-things checkpoint VBench uses), read from ``weights`` or the torch hub cache; never downloaded."""
    from torchvision.models.optical_flow import raft_large

    from diffalign.scorers.base import load_state_dict_file

    path = Path(weights) if weights is not None else Path(torch.hub.get_dir()) / "checkpoints" / RAFT_FILE
    if not path.is_file():
        raise VBenchError(f"dynamic_degree: RAFT weights {path} not found (torchvision's {RAFT_FILE}); pass --raft-weights FILE")
    model = raft_large(weights=None, progress=False)
    try:
        model.load_state_dict(load_state_dict_file(path))
    except RuntimeError as err:
        raise VBenchError(f"dynamic_degree: {path} is not a torchvision raft_large state dict ({str(err).splitlines()[0]})") from err
    return model.eval().requires_grad_(False).to(device)


def pad_to_multiple_of_8(frames: torch.Tensor) -> torch.Tensor:
    """RAFT's ``InputPadder`` (sintel mode): replicate padding, split evenly on both sides."""
    height, width = frames.shape[-2:]
    pad_h, pad_w = (-height) % 8, (-width) % 8
    return F.pad(frames, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], mode="replicate")


class DynamicDegree:
    name = "dynamic_degree"

    def __init__(self, raft: torch.nn.Module, updates: int = 20, batch_size: int = 8):
        self.raft = raft
        self.updates = updates
        self.batch_size = batch_size

    @staticmethod
    def sampled(video: Video) -> torch.Tensor:
        """Every ``round(fps/8)``-th frame (VBench's 8 fps subsampling; 1 when the fps is unknown or < 4)."""
        step = max(1, round(video.fps / 8)) if video.fps else 1
        return video.frames[::step]

    @torch.no_grad()
    def magnitudes(self, frames: torch.Tensor) -> list[float]:
        device = next(self.raft.parameters()).device
        padded = pad_to_multiple_of_8(frames.float().to(device))
        scaled = 2 * (padded / 255.0) - 1.0
        out = []
        for start in range(0, scaled.shape[0] - 1, self.batch_size):
            first = scaled[start : start + self.batch_size]
            second = scaled[start + 1 : start + 1 + self.batch_size]
            first = first[: second.shape[0]]
            flows = self.raft(first, second, num_flow_updates=self.updates)[-1]
            out.extend(top_flow_magnitude(flow) for flow in flows)
        return out

    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        frames = self.sampled(video)
        if min(frames.shape[-2:]) < 128:
            raise VBenchError(f"dynamic_degree: frames of {frames.shape[-2]}×{frames.shape[-1]} px; torchvision's RAFT needs at least 128 px a side")
        magnitudes = self.magnitudes(frames)
        moving = is_moving(magnitudes, frames.shape[-2], frames.shape[-1], frames.shape[0])
        return VideoScore(float(moving), 1, {"magnitudes": magnitudes})


class AestheticQuality:
    """LAION v1 linear head on CLIP ViT-L/14 (:class:`diffalign.scorers.aesthetic.AestheticScoreV1`
    with ``scale=0.1``), fed VBench's tensor CLIP transform."""

    name = "aesthetic_quality"

    def __init__(self, scorer, batch_size: int = 32):
        self.scorer = scorer
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        device = next(self.scorer.head.parameters()).device

        def score(chunk: torch.Tensor) -> torch.Tensor:
            embeds = self.scorer.backbone.encode_pixels(clip_pixels(chunk).to(device))
            return self.scorer.scale * self.scorer.head(embeds.float()).squeeze(-1)

        per_frame = _batched(score, video.frames, self.batch_size)
        return VideoScore(float(per_frame.double().mean()), 1)


MUSIQ_FILE = "musiq_spaq_ckpt-358bb6af.pth"


def load_musiq(weights: str | Path, device=None, **architecture) -> torch.nn.Module:
    """pyiqa's ``MUSIQ`` architecture with the SPAQ weights read safely (``weights_only=True``)."""
    try:
        from pyiqa.archs.musiq_arch import MUSIQ
    except ImportError as err:
        raise DimensionUnavailable(f"pyiqa is not installed ({err}); pip install 'diffalign[iqa]' (MUSIQ weights are non-commercial)") from err
    from diffalign.scorers.base import load_state_dict_file

    path = Path(weights)
    if not path.is_file():
        raise VBenchError(f"imaging_quality: MUSIQ weights {path} not found (pyiqa's {MUSIQ_FILE}); pass --musiq-weights FILE")
    model = MUSIQ(pretrained=False, pretrained_model_path=None, **architecture)
    state = {k.removeprefix("module."): v for k, v in load_state_dict_file(path).items()}
    model.load_state_dict(state)
    model.eval().requires_grad_(False).to(device)
    return model


class ImagingQuality:
    name = "imaging_quality"
    MODES = ("longer", "shorter", "shorter_centercrop", "None")

    def __init__(self, musiq: torch.nn.Module, mode: str = "longer"):
        if mode not in self.MODES:
            raise VBenchError(f"imaging_quality: unknown preprocessing mode {mode!r}; use one of {self.MODES}")
        self.musiq = musiq
        self.mode = mode

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """VBench ``imaging_quality.transform``: cap the longer (or shorter) side at 512, /255."""
        height, width = frames.shape[-2:]
        side = max(height, width) if self.mode == "longer" else min(height, width)
        if self.mode != "None" and side > 512:
            scale = 512.0 / side
            frames = _resize_uint8(frames, [int(scale * height), int(scale * width)], "bilinear")
            if self.mode == "shorter_centercrop":
                from torchvision.transforms.functional import center_crop

                frames = center_crop(frames, [512, 512])
        return frames.float() / 255.0

    @torch.no_grad()
    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        device = next(self.musiq.parameters()).device
        images = self.preprocess(video.frames)
        scores = [float(self.musiq(frame[None].to(device))) for frame in images]
        return VideoScore(sum(scores) / len(scores) / 100.0, 1, {"musiq": sum(scores) / len(scores)})


# -- detector dimensions (GRiT stand-in) ---------------------------------------------------------
class ImageColorClassifier(Protocol):
    """``classify(image 3×H×W in [0, 1], detections, classname) -> one colour name per detection``."""

    def __call__(self, image: torch.Tensor, detections: list[Detection], classname: str) -> list[str]: ...


class DetectorDimension:
    """A semantic dimension judged on 16 middle frames by a :class:`~diffalign.eval.detection.Detector`
    in place of VBench's GRiT-B. Detections scoring at most 0.5 (GRiT's threshold) are dropped; frames
    whose shorter side exceeds 768 px are resized to 720 first, as VBench does before GRiT."""

    name = "detector"

    def __init__(self, detector: Detector):
        self.detector = detector

    def frames(self, video: Video) -> torch.Tensor:
        frames = video.frames[middle_frame_indices(DETECTOR_FRAMES, video.frames.shape[0])]
        height, width = frames.shape[-2:]
        if min(height, width) > 768:
            scale = 720.0 / min(height, width)
            frames = _resize_uint8(frames, [int(scale * height), int(scale * width)], "bilinear")
        return frames

    def detect(self, frames: torch.Tensor) -> list[dict[str, list[Detection]]]:
        found = self.detector(frames.float() / 255.0)
        if len(found) != frames.shape[0]:
            raise VBenchError(f"the detector returned {len(found)} results for {frames.shape[0]} frames")
        return [{name: [d for d in dets if d.score > DETECTOR_THRESHOLD] for name, dets in frame.items()} for frame in found]

    @staticmethod
    def of_class(frame: dict[str, list[Detection]], name: str) -> list[Detection]:
        return list(frame.get(name, [])) + (list(frame.get(DETECTOR_ALIASES[name], [])) if name in DETECTOR_ALIASES else [])

    def _label(self, item: VBenchPrompt, key: str) -> Any:
        value = item.auxiliary.get(self.name, {}).get(key)
        if value is None:
            raise VBenchError(f"{item.prompt!r}: {self.name} needs auxiliary_info.{self.name}.{key}")
        return value


class ObjectClass(DetectorDimension):
    name = "object_class"

    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        target = self._label(item, "object")
        hits = [bool(self.of_class(frame, target)) for frame in self.detect(self.frames(video))]
        return VideoScore(float(sum(hits)), len(hits))


class MultipleObjects(DetectorDimension):
    name = "multiple_objects"

    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        targets = self._label(item, "object").split(" and ")
        hits = [all(self.of_class(frame, t) for t in targets) for frame in self.detect(self.frames(video))]
        return VideoScore(float(sum(hits)), len(hits))


class SpatialRelationship(DetectorDimension):
    """Per frame the best :func:`box_position_score` over all pairs of detections of A or B (0 if
    fewer than two); mean over all frames."""

    name = "spatial_relationship"

    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        label = self._label(item, "spatial_relationship")
        frame_scores = []
        for frame in self.detect(self.frames(video)):
            boxes = [d.box for d in self.of_class(frame, label["object_a"]) + self.of_class(frame, label["object_b"])]
            pairs = [box_position_score(label["relationship"], boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes))]
            frame_scores.append(max([0.0, *pairs]))
        return VideoScore(float(sum(frame_scores)), len(frame_scores), {"frames": frame_scores})


class Color(DetectorDimension):
    """Frames showing the object (a detection whose colour is one of VBench's colour words) and frames
    showing it in the target colour; video = colour frames / object frames, videos without the object
    skipped (``count = 0``); mean over videos. A colour classifier on each detection stands in for
    the colour word of GRiT's dense caption."""

    name = "color"

    def __init__(self, detector: Detector, classify_colors: ImageColorClassifier):
        super().__init__(detector)
        self.classify_colors = classify_colors

    @staticmethod
    def object_name(prompt: str, color: str) -> str:
        """VBench's parse of the object from the prompt (``"a red car"`` -> ``"car"``)."""
        return prompt.replace("a ", "").replace("an ", "").replace(color, "").strip()

    def __call__(self, video: Video, item: VBenchPrompt) -> VideoScore:
        target = self._label(item, "color")
        name = self.object_name(item.prompt, target)
        frames = self.frames(video)
        object_frames = color_frames = 0
        for image, frame in zip(frames, self.detect(frames)):
            detections = self.of_class(frame, name)
            colors = self.classify_colors(image.float() / 255.0, detections, name) if detections else []
            object_frames += any(c in VBENCH_COLOR_WORDS for c in colors)
            color_frames += target in colors
        if not object_frames:
            return VideoScore(0.0, 0, {"object_frames": 0})
        return VideoScore(color_frames / object_frames, 1, {"object_frames": object_frames, "color_frames": color_frames})


#: dimensions whose models exist in no maintained library here, with the reason
UNAVAILABLE = {
    "motion_smoothness": "needs AMT-S frame interpolation, which is in no maintained library (vendored in VBench, CC BY-NC 4.0)",
    "human_action": "needs UMT ViT-L/16 (Kinetics-400), which is in no maintained library",
    "scene": "needs Tag2Text (recognize-anything), which is in no maintained library",
    "temporal_style": "needs ViCLIP, available only as remote code (trust_remote_code is off)",
    "overall_consistency": "needs ViCLIP, available only as remote code (trust_remote_code is off)",
}
IMPLEMENTED = (
    "subject_consistency", "background_consistency", "temporal_flickering", "dynamic_degree", "aesthetic_quality",
    "imaging_quality", "object_class", "multiple_objects", "color", "spatial_relationship", "appearance_style",
)


def vbench_cache_dir() -> Path:
    """``$VBENCH_CACHE_DIR`` or ``~/.cache/vbench``, where VBench keeps its checkpoints."""
    return Path(os.environ.get("VBENCH_CACHE_DIR", Path.home() / ".cache" / "vbench"))


def load_default_detector(
    device=None, detector_model: str | None = None, color_model: str | None = None, color_pretrained: str | None = None
) -> tuple[Detector, ImageColorClassifier]:
    """The GenEval harness's Mask2Former detector (``diffalign.eval.geneval.detector``) and CLIP colour
    classifier (``diffalign.eval.geneval.colors``), imported lazily; unimportable means unavailable."""
    import importlib

    from diffalign.media import tensor_to_pil

    try:
        detector_module = importlib.import_module("diffalign.eval.geneval.detector")
        colors_module = importlib.import_module("diffalign.eval.geneval.colors")
    except ImportError as err:
        raise DimensionUnavailable(f"the GenEval detector (diffalign.eval.geneval.detector) cannot be imported: {err}") from err
    for module, needed in ((detector_module, "Mask2FormerDetector"), (colors_module, "CLIPColorClassifier")):
        if not hasattr(module, needed):
            raise DimensionUnavailable(f"{module.__name__} has no {needed}")
    detector = detector_module.Mask2FormerDetector(**({"model": detector_model} if detector_model else {}), device=device)
    clip = {k: v for k, v in (("model", color_model), ("pretrained", color_pretrained)) if v is not None}
    classifier = colors_module.CLIPColorClassifier(**clip, device=device)

    def classify_colors(image: torch.Tensor, detections: list[Detection], classname: str) -> list[str]:
        return classifier.classify(tensor_to_pil(image)[0], detections, classname)

    return detector, classify_colors


@dataclass
class ModelOptions:
    """Where each dimension's weights come from (hub ids resolve from the local Hugging Face cache)."""

    dino: str = "facebook/dino-vitb16"
    clip_b32: str = "openai/clip-vit-base-patch32"
    clip_l14: str = "openai/clip-vit-large-patch14"
    clip_backend: str = "auto"
    aesthetic_head: str | None = None  # default: VBench's cache, aesthetic_model/emb_reader/
    raft_weights: str | None = None  # default: the torch hub cache
    musiq_weights: str | None = None  # default: VBench's cache, pyiqa_model/
    musiq_architecture: dict[str, Any] = field(default_factory=dict)
    imaging_mode: str = "longer"
    detector: Detector | None = None  # default: the GenEval detector
    classify_colors: ImageColorClassifier | None = None  # default: the GenEval colour classifier
    detector_model: str | None = None  # the GenEval detector's checkpoint (default: its own)
    color_model: str | None = None  # the colour classifier's open_clip model (default: ViT-L-14)
    color_pretrained: str | None = None  # and its weights (default: openai)
    device: str | None = None
    batch_size: int = 32


def build_dimensions(names: Sequence[str], options: ModelOptions | None = None) -> dict[str, Dimension | DimensionUnavailable]:
    """Load what ``names`` need; a dimension that cannot run here maps to :class:`DimensionUnavailable`.
    Missing weight files raise :class:`VBenchError` (a user error, not an unavailable dimension)."""
    options = options or ModelOptions()
    unknown = [n for n in names if n not in IMPLEMENTED and n not in UNAVAILABLE]
    if unknown:
        raise VBenchError(f"unknown VBench dimension(s) {', '.join(unknown)}; known: {', '.join((*IMPLEMENTED, *UNAVAILABLE))}")
    # every weight file is checked before any model loads
    files = {
        "aesthetic_quality": options.aesthetic_head or vbench_cache_dir() / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth",
        "imaging_quality": options.musiq_weights or vbench_cache_dir() / "pyiqa_model" / MUSIQ_FILE,
        "dynamic_degree": options.raft_weights or Path(torch.hub.get_dir()) / "checkpoints" / RAFT_FILE,
    }
    import importlib.util

    for name, path in files.items():
        if name == "imaging_quality" and importlib.util.find_spec("pyiqa") is None:
            continue  # reported unavailable, whatever the weights
        if name in names and not Path(path).is_file():
            flag = {"aesthetic_quality": "--aesthetic-head", "imaging_quality": "--musiq-weights", "dynamic_degree": "--raft-weights"}[name]
            raise VBenchError(f"{name}: weights file {path} not found; pass {flag} FILE")
    try:
        return _build(names, options, files)
    except OSError as err:
        raise VBenchError(f"cannot load a VBench model: {str(err).splitlines()[0]}") from err


def _build(names: Sequence[str], options: ModelOptions, files: dict[str, Any]) -> dict[str, Dimension | DimensionUnavailable]:
    from diffalign.scorers.clip import load_backbone

    built: dict[str, Dimension | DimensionUnavailable] = {}
    clip_b32 = None
    detector_pair: tuple | DimensionUnavailable | None = None
    device, batch = options.device, options.batch_size
    for name in names:
        if name in UNAVAILABLE:
            built[name] = DimensionUnavailable(UNAVAILABLE[name])
        elif name == "subject_consistency":
            built[name] = SubjectConsistency(options.dino, device=device, batch_size=batch)
        elif name in ("background_consistency", "appearance_style"):
            clip_b32 = clip_b32 or load_backbone(options.clip_b32, options.clip_backend, device=device)
            built[name] = (BackgroundConsistency if name == "background_consistency" else AppearanceStyle)(clip_b32, batch_size=batch)
        elif name == "temporal_flickering":
            built[name] = TemporalFlickering()
        elif name == "dynamic_degree":
            built[name] = DynamicDegree(load_raft(files['dynamic_degree'], device=device))
        elif name == "aesthetic_quality":
            from diffalign.scorers.aesthetic import AestheticScoreV1

            scorer = AestheticScoreV1(head=files['aesthetic_quality'], clip_model=options.clip_l14, backend=options.clip_backend, scale=0.1, device=device)
            built[name] = AestheticQuality(scorer, batch_size=batch)
        elif name == "imaging_quality":
            try:
                built[name] = ImagingQuality(load_musiq(files['imaging_quality'], device=device, **options.musiq_architecture), options.imaging_mode)
            except DimensionUnavailable as err:
                built[name] = err
        else:  # the four detector dimensions
            if detector_pair is None:
                if options.detector is not None:
                    detector_pair = (options.detector, options.classify_colors)
                else:
                    try:
                        detector_pair = load_default_detector(device, options.detector_model, options.color_model, options.color_pretrained)
                    except DimensionUnavailable as err:
                        detector_pair = err
            if isinstance(detector_pair, DimensionUnavailable):
                built[name] = detector_pair
            elif name == "color":
                if detector_pair[1] is None:
                    built[name] = DimensionUnavailable("color needs a colour classifier next to the detector")
                else:
                    built[name] = Color(*detector_pair)
            else:
                built[name] = {"object_class": ObjectClass, "multiple_objects": MultipleObjects, "spatial_relationship": SpatialRelationship}[name](detector_pair[0])
    return built
