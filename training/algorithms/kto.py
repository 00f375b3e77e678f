"""Diffusion-KTO (Li et al., 2024, arXiv 2404.04465): Kahneman-Tversky optimisation on per-image labels.

Each image gets its own timestep and noise (no pairs). With denoising errors ``e`` (model's own prediction
space), the implicit reward is ``g = e_ref(x) - e_θ(x)``; the reference point is the batch mean of ``g``
averaged over processes, clamped at 0 and detached, ``z0 = max(0, sg(all_reduce_mean(mean_B g)))``; with
``s_y = +1`` for a desirable image and ``-1`` for an undesirable one,

``h = v(s_y·β·(g - z0))``, ``L = mean λ_y·(1 - h)``,

``v = σ`` (``utility = "sigmoid"``, the official default) or ``v = log σ`` (``"loss_averse"``);
``λ_D = desirable_weight``, ``λ_U = undesirable_weight`` (1 and 1 officially). Class balance comes from the
data loader (``data.positive_ratio``, the official weighted sampler), not from loss weights. The reference is
the frozen base (LoRA disabled, or the snapshot taken before full fine-tuning), or a named snapshot when
another algorithm sets one (IPO: the round's starting model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from diffalign.config import ConfigError, register_section

from .base import denoising_errors, register_algorithm
from .preference import PreferenceAlgorithm


@register_section("kto")
@dataclass
class KTOConfig:
    #: official default (beta_dpo): 1000
    beta: float = 1000.0
    utility: Literal["sigmoid", "loss_averse"] = "sigmoid"
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def kto_loss(policy: torch.Tensor, reference: torch.Tensor, desirable: torch.Tensor, beta: float,
             reference_point: torch.Tensor, utility: str = "sigmoid", weights: tuple[float, float] = (1.0, 1.0)):
    """Per-image ``λ_y·(1 - v(s_y·β·(g - z0)))`` with ``g = e_ref - e_θ``."""
    g = reference - policy
    sign = torch.where(desirable.bool(), 1.0, -1.0).to(g)
    x = sign * beta * (g - reference_point)
    h = torch.sigmoid(x) if utility == "sigmoid" else F.logsigmoid(x)
    lam = torch.where(desirable.bool(), weights[0], weights[1]).to(g)
    return lam * (1 - h), g


@register_algorithm
class DiffusionKTO(PreferenceAlgorithm):
    name = "kto"
    config_class = KTOConfig
    data_kind = "labels"

    def validate(self) -> None:
        super().validate()
        c = self.cfg
        if not c.beta > 0:
            raise ConfigError(f"kto.beta must be positive, got {c.beta}")
        if min(c.desirable_weight, c.undesirable_weight) < 0:
            raise ConfigError("kto.desirable_weight and kto.undesirable_weight must be >= 0")

    def reference_point(self, g: torch.Tensor) -> torch.Tensor:
        """``max(0, mean over the batch of every process)``, detached."""
        mean = g.detach().mean()
        acc = self.trainer.accelerator if self.trainer is not None else None
        if acc is not None and acc.num_processes > 1:
            mean = acc.reduce(mean, reduction="mean")
        return mean.clamp_min(0)

    def loss(self, micro):
        batch, t, noise = micro
        x0 = batch.latents.float()
        errors = denoising_errors(self.adapter, x0, noise.to(x0), t, batch.conditioning, reference=self.reference)
        g = errors.reference - errors.policy
        z0 = self.reference_point(g)
        c = self.cfg
        losses, _ = kto_loss(errors.policy, errors.reference, batch.labels, c.beta, z0, c.utility,
                             (c.desirable_weight, c.undesirable_weight))
        desirable = batch.labels.bool()
        stats = {"reference_point": z0.float(), "implicit_reward": g.detach().mean().float(),
                 "desirable_fraction": desirable.float().mean()}
        return losses.mean().float(), stats
