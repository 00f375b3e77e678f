"""The Rollout: everything a trainer needs from one batch of sampling, as one movable object."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


def _map_tensors(value: Any, fn) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return type(value)(fn(v) for v in value)
    return value


def cat_field(values: list[Any]) -> Any:
    """Concatenate one field of several batches along the batch dim (dicts recursively; ``None`` stays ``None``,
    0-d tensors and other values are taken from the first)."""
    if values[0] is None:
        return None
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values) if values[0].ndim > 0 else values[0]
    if isinstance(values[0], dict):
        return {k: cat_field([v[k] for v in values]) for k in values[0]}
    return values[0]


@dataclass
class Rollout:
    """One batch of samples with their whole trajectories.

    Shapes (``B`` samples, ``S`` sampler steps, latent shape ``L``):

    * ``latents``: ``B×(S+1)×L``, ``latents[:, 0]`` is the initial noise, ``latents[:, -1]`` the result.
    * ``timesteps``: ``S`` model timesteps (diffusers units) of each transition ``i -> i+1``.
    * ``sigmas``: ``S+1`` noise levels for flow-matching families (``None`` otherwise).
    * ``log_probs``: ``B×S`` per-step log-density of the transition (mean over latent dims by default),
      ``None`` for deterministic sampling.
    * ``conditioning``: per-sample prompt embeddings (``cond``) and, under CFG, the negative ones
      (``uncond``) — every tensor batch-first so the rollout slices cleanly.
    * ``sampler``: the settings needed to re-score a transition exactly (guidance, eta / noise level,
      log-prob reduction, ...).
    * ``latent_steps``: ``None`` when ``latents`` is the whole trajectory; else the trajectory indices it
      holds (``[S]``: only the final latents, ``B×1×L``, what ``sample(keep_latents="final")`` keeps).
    """

    prompts: list[str]
    latents: torch.Tensor
    timesteps: torch.Tensor
    conditioning: dict[str, Any]
    sampler: dict[str, Any] = field(default_factory=dict)
    log_probs: torch.Tensor | None = None
    sigmas: torch.Tensor | None = None
    media: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    latent_steps: list[int] | None = None

    # ------------------------------------------------------------------ views
    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.latents.shape[1] - 1 if self.latent_steps is None else int(self.timesteps.shape[0])

    @property
    def final_latents(self) -> torch.Tensor:
        return self.latents[:, -1]

    def __len__(self) -> int:
        return self.batch_size

    def nbytes(self) -> int:
        """Bytes held by the rollout's tensors (latents, conditioning, log-probs, media, extras ...)."""
        total = 0

        def count(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        self._each_tensor(count)
        return total

    def _each_tensor(self, fn) -> None:
        """Call ``fn`` on every tensor the rollout holds (shared ones too)."""
        for value in (self.latents, self.timesteps, self.sigmas, self.log_probs, self.media, self.rewards):
            if value is not None:
                fn(value)
        _map_tensors(self.conditioning, fn)
        _map_tensors(self.extras, fn)

    # ------------------------------------------------------------ movement
    def apply(self, fn) -> "Rollout":
        """Apply ``fn`` to every per-sample tensor (batch-first); shared tensors are kept."""
        batch = self.batch_size

        def per_sample(t: torch.Tensor) -> torch.Tensor:
            return fn(t) if t.ndim > 0 and t.shape[0] == batch else t

        out = dataclasses.replace(self)
        out.latents = fn(self.latents)
        out.conditioning = _map_tensors(self.conditioning, per_sample)
        out.extras = _map_tensors(self.extras, per_sample)
        for name in ("log_probs", "media", "rewards"):
            value = getattr(self, name)
            if value is not None:
                setattr(out, name, fn(value))
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Rollout":
        """Move every tensor (shared ones too) to ``device``; ``dtype`` applies to float tensors."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        out = dataclasses.replace(self)
        out.latents = move(self.latents)
        out.timesteps = move(self.timesteps)
        out.sigmas = move(self.sigmas) if self.sigmas is not None else None
        out.conditioning = _map_tensors(self.conditioning, move)
        out.extras = _map_tensors(self.extras, move)
        for name in ("log_probs", "media", "rewards"):
            value = getattr(self, name)
            if value is not None:
                setattr(out, name, move(value))
        return out

    def __getitem__(self, index: slice | torch.Tensor | list[int] | int) -> "Rollout":
        """Select samples (a slice, an index tensor or a list of indices)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        out = self.apply(lambda t: t[index])
        if isinstance(index, slice):
            out.prompts = self.prompts[index]
        else:
            idx = index.tolist() if isinstance(index, torch.Tensor) else list(index)
            out.prompts = [self.prompts[i] for i in idx]
        return out

    @staticmethod
    def cat(rollouts: list["Rollout"]) -> "Rollout":
        """Concatenate rollouts along the batch (same sampler settings and timesteps required)."""
        if not rollouts:
            raise ValueError("Rollout.cat needs at least one rollout")
        first = rollouts[0]
        for other in rollouts[1:]:
            if (other.sampler != first.sampler or other.latent_steps != first.latent_steps
                    or not torch.equal(other.timesteps.cpu(), first.timesteps.cpu())):
                raise ValueError("cannot concatenate rollouts sampled with different settings or timesteps")

        return Rollout(
            prompts=[p for r in rollouts for p in r.prompts],
            latents=torch.cat([r.latents for r in rollouts]),
            timesteps=first.timesteps,
            conditioning=cat_field([r.conditioning for r in rollouts]),
            sampler=dict(first.sampler),
            log_probs=cat_field([r.log_probs for r in rollouts]),
            sigmas=first.sigmas,
            media=cat_field([r.media for r in rollouts]),
            rewards=cat_field([r.rewards for r in rollouts]),
            extras=cat_field([r.extras for r in rollouts]),
            latent_steps=first.latent_steps,
        )
