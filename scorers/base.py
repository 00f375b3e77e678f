"""The scorer contract: ``scorer(media, prompts) -> Tensor[B]``.

Every reward model, metric and judge in diffalign is a :class:`Scorer`. It takes media tensors in
[0, 1] (images ``B×C×H×W``, videos ``B×T×C×H×W``, see :mod:`diffalign.media`) and one prompt per
item, and returns one float32 score per item on the media's device. Subclasses implement only
:meth:`Scorer.score_images` (or :meth:`Scorer.score_videos` for video scorers); validation,
chunking by ``batch_size`` and frame-wise scoring of videos by image scorers happen here.

Scorers register by name in :data:`SCORERS` (and through the ``diffalign.scorers`` entry-point
group, so other packages add their own); :func:`load` builds one from a name or from a weighted
spec such as ``"pickscore:0.7,aesthetic:0.3"``.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence, Union

import torch
from torch import nn

from diffalign.errors import UserError
from diffalign.media import check_media
from diffalign.registry import Registry

Prompts = Union[str, Sequence[str], None]

#: name -> factory(**options) -> Scorer. Entry points in group ``diffalign.scorers`` are added on lookup.
SCORERS: Registry["Scorer"] = Registry("scorer", entry_point_group="diffalign.scorers")


def register_scorer(name: str, *, overwrite: bool = False) -> Callable:
    """Class or factory decorator: ``@register_scorer("pickscore")``."""
    return SCORERS.register(name, overwrite=overwrite)


class Scorer(nn.Module):
    """Base class of all scorers.

    Attributes:
        name: registry name (``"pickscore"``) or a spec for combinations.
        modality: ``"image"`` or ``"video"``: what :meth:`score_images` / :meth:`score_videos` takes.
            An image scorer given videos scores every ``frame_stride``-th frame and averages.
        differentiable: gradients of the score reach the input media (preprocessing on tensors).
        needs_prompts: ``False`` for prompt-free scores (aesthetic, JPEG size); prompts may be ``None``.
        batch_size: the largest chunk of items (or frames) sent to the model at once.
    """

    name: str = "scorer"
    modality: str = "image"
    differentiable: bool = False
    needs_prompts: bool = True
    batch_size: int = 32

    def __init__(self, *, batch_size: int | None = None, frame_stride: int = 1):
        super().__init__()
        if batch_size is not None:
            if int(batch_size) < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            self.batch_size = int(batch_size)
        if int(frame_stride) < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.frame_stride = int(frame_stride)

    # -- device / dtype -----------------------------------------------------------------------
    def _first_tensor(self) -> torch.Tensor | None:
        for tensor in self.parameters():
            return tensor
        for tensor in self.buffers():
            return tensor
        return None

    @property
    def device(self) -> torch.device:
        """Device of the scorer's weights (CPU for weight-free scorers)."""
        tensor = self._first_tensor()
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the scorer's weights (float32 for weight-free scorers)."""
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    # -- the contract -------------------------------------------------------------------------
    def score_images(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """Score ``B×3×H×W`` images in [0, 1] (already on :attr:`device`) -> ``Tensor[B]``."""
        raise NotImplementedError(f"{type(self).__name__} does not score images")

    def score_videos(self, videos: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """Score ``B×T×3×H×W`` videos in [0, 1] (already on :attr:`device`) -> ``Tensor[B]``."""
        raise NotImplementedError(f"{type(self).__name__} does not score videos")

    def check_prompts(self, prompts: Prompts, batch: int) -> list[str] | None:
        """One prompt per item; a single string is used for every item."""
        if prompts is None:
            if self.needs_prompts:
                raise ValueError(f"scorer {self.name!r} needs one prompt per item, got prompts=None")
            return None
        if isinstance(prompts, str):
            return [prompts] * batch
        prompts = list(prompts)
        if len(prompts) != batch:
            raise ValueError(f"scorer {self.name!r} got {len(prompts)} prompts for a batch of {batch} media items")
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompt {index} must be a str, got {type(prompt).__name__}")
        return prompts

    def forward(self, media: torch.Tensor, prompts: Prompts = None) -> torch.Tensor:
        """``Tensor[B]`` float32 scores on ``media.device``; see the class docstring."""
        found = check_media(media)
        batch = media.shape[0]
        prompts = self.check_prompts(prompts, batch)
        if batch == 0:
            return torch.zeros(0, dtype=torch.float32, device=media.device)
        if not media.is_floating_point():
            raise TypeError(f"media must be a float tensor in [0, 1], got dtype {media.dtype}")
        if found == "image" and self.modality == "video":
            raise ValueError(f"scorer {self.name!r} scores videos (B×T×C×H×W), got images of shape {tuple(media.shape)}")
        if found == "video" and self.modality == "image":
            frames = media[:, :: self.frame_stride]
            count = frames.shape[1]
            flat = frames.reshape(batch * count, *frames.shape[2:])
            flat_prompts = None if prompts is None else [p for p in prompts for _ in range(count)]
            scores = self._chunked(self.score_images, flat, flat_prompts)
            return scores.view(batch, count).mean(dim=1).to(media.device)
        score = self.score_images if found == "image" else self.score_videos
        return self._chunked(score, media, prompts).to(media.device)

    def _chunked(self, fn, media: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        outputs = []
        for start in range(0, media.shape[0], self.batch_size):
            chunk = media[start : start + self.batch_size].to(self.device)
            chunk_prompts = None if prompts is None else prompts[start : start + self.batch_size]
            out = fn(chunk, chunk_prompts)
            if out.shape != (chunk.shape[0],):
                raise RuntimeError(f"scorer {self.name!r} returned shape {tuple(out.shape)} for {chunk.shape[0]} items")
            outputs.append(out.float())
        return torch.cat(outputs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, modality={self.modality!r}, differentiable={self.differentiable}, batch_size={self.batch_size}"


class WeightedSum(Scorer):
    """``score = Σ_k w_k · scorer_k(media, prompts)``; itself a scorer.

    Modality is ``"video"`` if any part is a video scorer (image parts then score frame-wise), and
    it is differentiable only if every part is.
    """

    def __init__(self, weights: Mapping[Scorer, float] | Sequence[tuple[Scorer, float]], name: str | None = None):
        super().__init__()
        pairs = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        if not pairs:
            raise ValueError("WeightedSum needs at least one (scorer, weight) pair")
        for scorer, weight in pairs:
            if not isinstance(scorer, Scorer):
                raise TypeError(f"WeightedSum parts must be Scorer instances, got {type(scorer).__name__}")
            if not isinstance(weight, (int, float)):
                raise TypeError(f"weight of {scorer.name!r} must be a number, got {weight!r}")
        self.scorers = nn.ModuleList(scorer for scorer, _ in pairs)
        self.weights = [float(weight) for _, weight in pairs]
        self.name = name or ",".join(f"{s.name}:{w:g}" for s, w in zip(self.scorers, self.weights))
        self.modality = "video" if any(s.modality == "video" for s in self.scorers) else "image"
        self.differentiable = all(s.differentiable for s in self.scorers)
        self.needs_prompts = any(s.needs_prompts for s in self.scorers)
        self.batch_size = min(s.batch_size for s in self.scorers)

    def forward(self, media: torch.Tensor, prompts: Prompts = None) -> torch.Tensor:
        check_media(media)
        prompts = self.check_prompts(prompts, media.shape[0])
        total = torch.zeros(media.shape[0], dtype=torch.float32, device=media.device)
        for scorer, weight in zip(self.scorers, self.weights):
            part_prompts = prompts if scorer.needs_prompts else None
            total = total + weight * scorer(media, part_prompts)
        return total


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """``"pickscore:0.7,aesthetic:0.3"`` -> ``[("pickscore", 0.7), ("aesthetic", 0.3)]``; a bare name has weight 1."""
    parts = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise UserError(f"empty scorer name in spec {spec!r}")
        name, sep, weight = item.partition(":")
        name = name.strip()
        if not name:
            raise UserError(f"empty scorer name in spec {spec!r}")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            raise UserError(f"weight of {name!r} in spec {spec!r} is not a number: {weight!r}") from None
        parts.append((name, value))
    return parts


def load(name_or_spec: str, **options) -> Scorer:
    """Build a scorer from a registered name or a weighted spec.

    ``load("pickscore", device="cuda")`` builds one scorer with those options.
    ``load("pickscore:0.7,aesthetic:0.3", device="cuda", pickscore={"dtype": "bfloat16"})`` builds a
    :class:`WeightedSum`; plain options go to every part, and an option named after a part (a dict)
    goes to that part only.
    """
    from diffalign.scorers import _import_builtins

    _import_builtins()
    parts = parse_spec(name_or_spec)
    if len(parts) == 1 and ":" not in name_or_spec:
        return _build(parts[0][0], options)
    names = {name for name, _ in parts}
    shared = {k: v for k, v in options.items() if not (k in names and isinstance(v, Mapping))}
    built = []
    for name, weight in parts:
        own = dict(shared)
        own.update(options.get(name, {}) if isinstance(options.get(name), Mapping) else {})
        built.append((_build(name, own), weight))
    return WeightedSum(built, name=name_or_spec.replace(" ", ""))


def _build(name: str, options: Mapping) -> Scorer:
    from diffalign.errors import scorer_factory_weights

    scorer_factory_weights(name, SCORERS.get(name), options)  # missing weights: a UserError before any load
    scorer = SCORERS.build(name, **options)
    if not isinstance(scorer, Scorer):
        raise TypeError(f"scorer factory {name!r} returned {type(scorer).__name__}, not a Scorer")
    return scorer


def list_scorers() -> list[str]:
    """Names of every registered scorer (built-ins and entry points)."""
    from diffalign.scorers import _import_builtins

    _import_builtins()
    return SCORERS.names()


# -- helpers shared by model-backed scorers ---------------------------------------------------
def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` -> ``torch.bfloat16``; ``None`` stays ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}
    name = aliases.get(str(dtype).lower(), str(dtype).lower())
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return value


def freeze(module: nn.Module, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> nn.Module:
    """Eval mode, no parameter gradients (scores stay differentiable w.r.t. the input), moved."""
    module.eval().requires_grad_(False)
    return module.to(device=device, dtype=resolve_dtype(dtype))


def load_state_dict_file(path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely: safetensors, or ``.pt/.pth/.bin`` with ``weights_only=True``.

    A checkpoint that nests its weights under ``"state_dict"`` or ``"model"`` is unwrapped.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    if path.suffix not in {".pt", ".pth", ".bin", ".ckpt"}:
        raise ValueError(f"checkpoint {path}: expected .safetensors, .pt, .pth, .bin or .ckpt")
    state = torch.load(path, map_location=map_location, weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} does not hold a state dict (got {type(state).__name__})")
    return state


def resolve_file(source, filename: str | None = None):
    """A checkpoint file from a local file, a local folder (+ ``filename``), or the Hugging Face Hub.

    Hub forms: ``"org/repo"`` (+ ``filename``) or ``"org/repo/path/in/repo"``. Local paths win, so
    offline use needs no network; a hub download goes through ``huggingface_hub`` and its cache.
    """
    from pathlib import Path

    path = Path(str(source)).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if filename is None:
            raise ValueError(f"{path} is a folder; name the checkpoint file inside it")
        if not (path / filename).is_file():
            raise FileNotFoundError(f"{path} has no {filename}")
        return path / filename
    parts = str(source).split("/")
    if len(parts) < 2 or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"checkpoint {source!r} is neither a local file/folder nor a hub id 'org/repo[/file]'")
    repo, inner = "/".join(parts[:2]), "/".join(parts[2:]) or filename
    if not inner:
        raise ValueError(f"hub repository {repo!r} given without a file name")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, inner))
