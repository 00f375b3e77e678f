"""A denoising loss on real (caption, media) examples beside an algorithm's own loss.

ReFL's pre-training loss (Xu et al. 2023, ImageReward §4.2) and IPO's real-video regulariser are the same term:

    L = L_algorithm + λ · mean_b e_θ(x_b),   e_θ(x) = mean_d ||target(x, ε, t) - f_θ(add_noise(x, ε, t), t, c)||²

in the model's own prediction space (epsilon, v or flow velocity: :func:`~.base.denoising_errors`, policy only,
no CFG). The examples come from ``[data]`` (an experts or winners source: prompts with media; on ShapesWorld the
rendered ground truth, ``diffalign prefs experts``), drawn by the data module's seeded, distributed, resumable
loader, one riding with each training example (``data.examples_per_epoch`` equals the algorithm's examples per
epoch), so they are split and moved with the batch. ``t`` and ``ε`` come from the training example's own
generator, so a resumed or multi-process run draws the same ones.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from diffalign.config import ConfigError

from .base import Algorithm, denoising_errors

__all__ = ["RealDataLoss"]

LATENTS, COND = "real_latents", "real_cond"


class RealDataLoss:
    """``λ·L_real`` of ``algorithm``: ``weight_key`` names the λ setting in errors, ``stream`` seeds the draws."""

    def __init__(self, algorithm: Algorithm, weight: float, weight_key: str, stream: str):
        self.algorithm = algorithm
        self.weight = float(weight)
        self.weight_key = weight_key
        self.stream = stream
        self.loader = None

    @property
    def data(self):
        return self.algorithm.config.section("data")

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def validate(self, examples: int, examples_source: str) -> None:
        """Config errors, before anything loads: λ, the source, and one real example per training example."""
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"{self.weight_key} must be a finite number >= 0, got {self.weight}")
        data = self.data
        if not self.enabled:
            if data.source:
                raise ConfigError(f"data.source is set but {self.weight_key} = 0: set {self.weight_key} > 0 to train on "
                                  f"it, or remove data.source")
            return
        if not data.source:
            raise ConfigError(f"{self.weight_key} > 0 needs real examples: set data.source (an experts or winners "
                              f"source, e.g. `diffalign prefs experts`)")
        if data.examples_per_epoch != examples:
            raise ConfigError(f"data.examples_per_epoch = {data.examples_per_epoch} must equal {examples_source} = "
                              f"{examples}: one real example rides with each training example")

    def setup(self) -> None:
        if self.enabled:
            from .preference import open_loader

            self.loader = open_loader(self.algorithm, self.data, "experts", seed_name=self.stream)

    def attach(self, extras: dict[str, Any]) -> None:
        """Draw the next real examples into ``extras`` (their latents and conditioning, one per training example)."""
        if self.loader is None:
            return
        real = self.loader.next_batch()
        with torch.no_grad():
            extras[COND] = self.algorithm.adapter.encode_prompts(real.prompts, do_cfg=False)["cond"]
        extras[LATENTS] = real.latents.float()

    def loss(self, extras: dict[str, Any], sample_index: torch.Tensor) -> torch.Tensor:
        """``mean_b e_θ(x_b)`` (not yet weighted) with ``t`` and ``ε`` from each training example's generator."""
        x0 = extras[LATENTS]
        gens = [self.algorithm.generator(self.stream, int(i)) for i in sample_index.tolist()]
        noise = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in gens]).to(x0)
        adapter = self.algorithm.adapter
        t = torch.cat([adapter.sample_training_timesteps(1, generator=g).reshape(1) for g in gens]).to(x0.device)
        return denoising_errors(adapter, x0, noise, t, {"cond": extras[COND]}, reference=None).policy.mean().float()

    def add_to(self, loss: torch.Tensor, stats: dict[str, Any], extras: dict[str, Any], sample_index: torch.Tensor,
               name: str) -> tuple[torch.Tensor, dict[str, Any]]:
        """``loss + λ·L_real`` and the stats with ``name`` (the unweighted ``L_real``); unchanged when off."""
        if not self.enabled:
            return loss, stats
        real = self.loss(extras, sample_index)
        return loss + self.weight * real, {**stats, name: real.detach()}

    def state_dict(self) -> dict[str, Any] | None:
        return self.loader.state_dict() if self.loader is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.loader is not None and state is not None:
            self.loader.load_state_dict(state)
