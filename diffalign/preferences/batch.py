"""One batch of preference examples, as the training loop sees it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from diffalign.rollout import _map_tensors, cat_field

#: the four kinds of example
#: * ``pairs``: (prompt, preferred, rejected, soft label = P(preferred is better) in [0.5, 1], 1 when hard)
#: * ``labels``: (prompt, media, desirable) — Diffusion-KTO
#: * ``winners``: (prompt, media) — SePPO
#: * ``experts``: (prompt, media) — Diffusion-DRO
KINDS = ("pairs", "labels", "winners", "experts")


@dataclass
class PreferenceBatch:
    """``B`` examples of one kind.

    * ``media``: pairs ``B×2×C×H×W`` (video ``B×2×T×C×H×W``), preferred first; other kinds ``B×C×H×W``
      (``B×T×C×H×W``); float in [0, 1]. ``None`` once the latents are known and the media dropped.
    * ``latents``: clean latents ``x0`` as the denoiser sees them (``adapter.encode``), same leading layout
      as ``media`` (pairs ``B×2×L``); filled by the data cache or by the algorithm's ``collect``.
    * ``labels``: pairs: the soft label; ``labels``: 1.0 desirable / 0.0 undesirable; else ``None``.
    * ``conditioning``: prompt embeddings ``{"cond": {...}, "uncond": ...}`` once encoded (batch-first).
    * ``row_ids``: the source rows (for skip lists and debugging).
    * ``extras``: per-example tensors an algorithm adds (``sample_index`` ...).
    """

    kind: str
    prompts: list[str]
    row_ids: list[str]
    media: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    conditioning: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown preference kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        if len(self.row_ids) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.row_ids)} row ids")

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def __len__(self) -> int:
        return self.batch_size

    def apply(self, fn) -> "PreferenceBatch":
        """Apply ``fn`` to every per-example tensor (batch-first)."""
        batch = self.batch_size

        def per_example(t: torch.Tensor) -> torch.Tensor:
            return fn(t) if t.ndim > 0 and t.shape[0] == batch else t

        out = dataclasses.replace(self)
        for name in ("media", "latents", "labels"):
            value = getattr(self, name)
            if value is not None:
                setattr(out, name, per_example(value))
        out.conditioning = _map_tensors(self.conditioning, per_example) if self.conditioning is not None else None
        out.extras = _map_tensors(self.extras, per_example)
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PreferenceBatch":
        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        out = dataclasses.replace(self)
        for name in ("media", "latents", "labels"):
            value = getattr(self, name)
            if value is not None:
                setattr(out, name, move(value))
        out.conditioning = _map_tensors(self.conditioning, move) if self.conditioning is not None else None
        out.extras = _map_tensors(self.extras, move)
        return out

    def __getitem__(self, index: slice | torch.Tensor | list[int] | int) -> "PreferenceBatch":
        if isinstance(index, int):
            index = slice(index, index + 1)
        if isinstance(index, slice):
            prompts, rows = self.prompts[index], self.row_ids[index]
        else:
            idx = index.tolist() if isinstance(index, torch.Tensor) else list(index)
            prompts, rows = [self.prompts[i] for i in idx], [self.row_ids[i] for i in idx]
            index = torch.as_tensor(idx, dtype=torch.long)
        out = self.apply(lambda t: t[index.to(t.device) if isinstance(index, torch.Tensor) else index])
        out.prompts, out.row_ids = prompts, rows
        return out

    @staticmethod
    def cat(batches: list["PreferenceBatch"]) -> "PreferenceBatch":
        if not batches:
            raise ValueError("PreferenceBatch.cat needs at least one batch")
        first = batches[0]
        if any(b.kind != first.kind for b in batches):
            raise ValueError("cannot concatenate preference batches of different kinds")

        return PreferenceBatch(
            kind=first.kind,
            prompts=[p for b in batches for p in b.prompts],
            row_ids=[r for b in batches for r in b.row_ids],
            media=cat_field([b.media for b in batches]),
            latents=cat_field([b.latents for b in batches]),
            labels=cat_field([b.labels for b in batches]),
            conditioning=cat_field([b.conditioning for b in batches]),
            extras=cat_field([b.extras for b in batches]),
        )
