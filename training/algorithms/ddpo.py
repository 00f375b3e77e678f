"""DDPO — Denoising Diffusion Policy Optimization (Black et al., 2023, arXiv 2305.13301).

The reverse chain is a T-step MDP; with a stochastic sampler (DDIM η=1 for UNets, the Flow-GRPO
SDE for flow models) each transition is a Gaussian ``p_θ(x_{t-1}|x_t,c) = N(μ_θ, σ_t² I)`` whose
log-density (mean over latent dims) is recorded at sampling time.

* DDPO_IS (``objective = "clipped"``, the official default), per trained step ``t``:
  ``r_t = exp(log p_θ(x_{t-1}|x_t,c) - log p_old)``,
  ``L = mean max(-A·r_t, -A·clip(r_t, 1-ε, 1+ε))`` with ``ε = 1e-4`` (calibrated to mean log-probs).
* DDPO_SF (``objective = "score_function"``): ``L = -mean A·log p_θ(x_{t-1}|x_t,c)`` (REINFORCE).

Advantages come from the per-prompt reward history (``advantage.mode = "per_prompt"``). The
denoiser is re-evaluated with the sampling guidance (train-time CFG recombined with the sampling
scale, both branches differentiable). Each sample's time axis is shuffled independently and the
first ``int(S·timestep_fraction)`` shuffled steps are trained. No KL / reference term.

``skip_last_step = true`` never trains the last transition (the shuffle and the fraction then cover
the other ``S-1``). On few-step DDIM schedules that transition lands on ``ᾱ ≈ 1`` with a tiny step
std (σ ≈ 0.03 against 0.26-0.82 for the others on ``shapes-sd`` at 10 steps); its noise barely moves
the sample, so it carries almost no reward signal, while its score ``z/σ`` gives it a gradient about
12x larger than any other step's, which drowns the update in noise. (Flow-GRPO's
``timestep_fraction = 0.99`` skips it for the same reason.)

With ``sampling.sde_window = k`` (see :mod:`.flow_grpo`) only the window's ``k`` steps are stochastic
and every one of them is trained (``timestep_fraction`` and ``skip_last_step`` are not used).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from diffalign.config import ConfigError, register_section
from diffalign.rollout import Rollout

from .base import Algorithm, clipped_policy_loss, register_algorithm


@register_section("ddpo")
@dataclass
class DDPOConfig:
    clip_range: float = 1e-4
    timestep_fraction: float = 1.0
    objective: Literal["clipped", "score_function"] = "clipped"
    #: never train the last transition (see the module docstring); off in the official DDPO
    skip_last_step: bool = False


@register_algorithm
class DDPO(Algorithm):
    name = "ddpo"
    config_class = DDPOConfig
    default_advantage_mode = "per_prompt"

    def validate(self) -> None:
        super().validate()
        self.num_train_timesteps()
        if self.cfg.clip_range <= 0:
            raise ConfigError(f"ddpo.clip_range must be positive, got {self.cfg.clip_range}")

    def num_train_timesteps(self) -> int:
        return self.steps_from_fraction(pool=self.config.sampling.steps - int(self.cfg.skip_last_step))

    def micro_batches(self, batch: Rollout, epoch: int, inner_epoch: int):
        window = self.window_steps(batch)
        pool = torch.tensor(window) if window else torch.arange(batch.num_steps - int(self.cfg.skip_last_step))
        perms = torch.stack([
            pool[torch.randperm(len(pool), generator=self.generator("time", epoch, inner_epoch, int(g)))]
            for g in batch.extras["sample_index"].tolist()
        ])
        for j in range(self.micro_steps_per_batch()):
            yield batch, perms[:, j]

    def loss(self, micro):
        batch, steps = micro
        log_prob = self.adapter.step_log_prob(batch, steps)
        old = batch.log_probs.gather(1, steps.to(batch.log_probs.device)[:, None])[:, 0].to(log_prob.device)
        advantages = batch.extras["advantages"].to(log_prob.device)
        if self.cfg.objective == "score_function":
            loss = -(advantages * log_prob).mean()
            _, stats = clipped_policy_loss(log_prob, old, advantages, self.cfg.clip_range)
        else:
            loss, stats = clipped_policy_loss(log_prob, old, advantages, self.cfg.clip_range)
        return loss, {"policy_loss": loss.detach(), **stats}
