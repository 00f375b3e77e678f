"""Flow-GRPO — GRPO for flow models (Liu et al., 2025, arXiv 2505.05470).

Rollouts use a stochastic sampler with tractable transitions (the marginal-preserving flow SDE
``dx = [v + σ_t²/(2t)(x + (1-t)v)]dt + σ_t dw``, ``σ_t = a·sqrt(t/(1-t))``, ``a = noise_level = 0.7``;
on UNet families the adapter's DDIM-η step plays the same role). Each prompt is sampled
``group_size`` times; advantages are group-relative, ``A_i = (R_i - mean_group R)/(std + 1e-4)``
(``advantage.mode = "group"``, std over the whole batch by default). Per trained step ``t``:

``L = mean max(-A·r_t, -A·clip(r_t, 1-ε, 1+ε)) + β · mean_d ||μ_θ - μ_ref||² / (2 σ²)``,

``r_t = exp(log p_θ - log p_old)``, ``ε = 1e-4``. The KL is the closed-form Gaussian KL between
the policy's and the reference's step means (reference = LoRA disabled / frozen copy, computed
inside ``adapter.reference()``). ``kl_std = "unit_time"`` divides by the per-unit-time std
``σ_t`` as the official code does (so its β values carry over; on flow rollouts
``σ_t = std_step/sqrt(σ_i - σ_{i+1})``); ``"transition"`` uses the exact per-step std. The
unconditional CFG branch is detached (``cfg_grad = "cond_only"``). The first
``int(S·timestep_fraction)`` steps are trained, in order (0.99 of 10 -> 9: the last step is skipped).

Flow-GRPO-Fast (``sampling.sde_window = k``): only ``k`` consecutive steps, placed each epoch inside
``sampling.sde_window_range`` (default the first half of the schedule), are stochastic; the others are
deterministic ODE / DDIM steps. Every window step is trained and nothing else (``timestep_fraction``
is not used), so all of a group's variation is credited to the steps that are trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from diffalign.config import ConfigError, register_section
from diffalign.rollout import Rollout

from .base import Algorithm, clipped_policy_loss, mean_over_sample, register_algorithm


@register_section("flow_grpo")
@dataclass
class FlowGRPOConfig:
    clip_range: float = 1e-4
    #: KL weight; the official value changed three times (see the recipes' provenance notes)
    kl_beta: float = 0.04
    kl_std: Literal["unit_time", "transition"] = "unit_time"
    timestep_fraction: float = 0.99
    cfg_grad: Literal["cond_only", "both"] = "cond_only"


@register_algorithm
class FlowGRPO(Algorithm):
    name = "flow_grpo"
    config_class = FlowGRPOConfig
    default_advantage_mode = "group"

    def validate(self) -> None:
        super().validate()
        self.num_train_timesteps()
        if self.cfg.kl_beta < 0:
            raise ConfigError(f"flow_grpo.kl_beta must be >= 0, got {self.cfg.kl_beta}")

    def num_train_timesteps(self) -> int:
        return self.steps_from_fraction()

    def micro_batches(self, batch: Rollout, epoch: int, inner_epoch: int):
        for step in self.window_steps(batch) or range(self.num_train_timesteps()):
            yield batch, step

    def kl_scale(self, batch: Rollout, step: int, std: torch.Tensor) -> torch.Tensor:
        """The std the mean-KL divides by (see the module docstring)."""
        if self.cfg.kl_std == "unit_time" and batch.sigmas is not None:
            dt = (batch.sigmas[step] - batch.sigmas[step + 1]).abs().to(std)
            return std / dt.sqrt()
        return std

    def loss(self, micro):
        batch, step = micro
        log_prob, mean, std = self.adapter.step_log_prob(batch, step, cfg_grad=self.cfg.cfg_grad, return_mean=True)
        old = batch.log_probs[:, step].to(log_prob.device)
        advantages = batch.extras["advantages"].to(log_prob.device)
        policy_loss, stats = clipped_policy_loss(log_prob, old, advantages, self.cfg.clip_range)
        loss = policy_loss
        if self.cfg.kl_beta > 0:
            with self.adapter.reference():
                _, ref_mean, _ = self.adapter.step_log_prob(batch, step, return_mean=True)
            scale = self.kl_scale(batch, step, std.float())
            kl = mean_over_sample((mean.float() - ref_mean.float()) ** 2 / (2 * scale**2)).mean()
            loss = loss + self.cfg.kl_beta * kl
            stats["kl"] = kl.detach()
        return loss, {"policy_loss": policy_loss.detach(), **stats}
