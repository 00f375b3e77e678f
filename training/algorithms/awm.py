"""AWM — Advantage Weighted Matching (Xue et al., 2025, arXiv 2509.25050).

Instead of per-step Gaussian log-likelihoods, AWM re-uses the pre-training denoising / flow-matching
loss on the *final* sample ``x0`` of each rollout, weighted by the sample's advantage. Rollouts may
use any sampler (deterministic ODE included); no log-probs are recorded.

For each sample, ``K = train_timesteps`` schedule indices are drawn, one per stratum of
``[1, int(S·timestep_fraction)]`` (index 0, pure noise, excluded), with fresh noise ``ε``:
``x_t = add_noise(x0, ε, t)``, target ``training_target(x0, ε, t)`` (``ε - x0`` for flow, ε or v for
VP models), ``m = mean_d (f_θ(x_t, t, c) - target)²`` in float64, and a log-likelihood surrogate

* ``uniform``: ``ℓ = -m``; ``t``: ``ℓ = -t·m``; ``t2``: ``ℓ = -t²·m``;
* ``huber``: ``ℓ = -t·(sqrt(m + 1e-10) - 1e-5)`` (the ``p = ½`` member of the family below, halved);
* ``ghuber`` (default): ``ℓ = -t·((m + 1e-10)^p - (1e-10)^p)/p``, ``p = 0.25``,

with ``t ∈ [0, 1]`` the noise level (flow σ, or ``timestep / num_train_timesteps`` for VP models).
Advantages are group-relative, clipped to ±``advantage.clip_max`` (5) and rescaled to
±``advantage_max`` (1). The loss is

``L = mean(-A·r) + β·mean||f_θ - f_ref||² + β_ema·mean||f_θ - f_ema||²``.

The official code writes the policy term as PPO's clipped ratio ``r = exp(ℓ_θ - sg(ℓ_old))`` with
``ℓ_old`` the detached current value, so ``r ≡ 1`` on-policy and ``∇L_pg = -mean A·∇ℓ``. We
implement that gradient-equivalent form directly, ``L_pg = -mean(A·ℓ)``: same gradient, same
optimizer update. ``f_ref`` is the reference (LoRA disabled / frozen copy); ``f_ema`` is the adapter's
snapshot ``ema`` of the trainable weights, updated after every epoch as ``θ_ema ← d·θ_ema + (1-d)·θ``,
``d = min(ema_decay_max, ema_decay_rate·global_step)``. Training is strictly on-policy: exactly one
optimizer step per epoch (gradients accumulate over all micro-batches of the epoch), so
``train.inner_epochs`` and ``train.updates_per_epoch`` must be 1.

Deliberate differences from the official code: training timesteps are drawn per sample (the
official code shares one draw across a micro-batch), which makes the update independent of how
samples are split over processes; the "skip the first two epochs" sampler workaround is not copied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from diffalign.config import ConfigError, register_section
from diffalign.rollout import Rollout

from .base import Algorithm, denoising_errors, register_algorithm

GHUBER_EPS = 1e-10


@register_section("awm")
@dataclass
class AWMConfig:
    train_timesteps: int = 6
    timestep_fraction: float = 0.9
    weighting: Literal["uniform", "t", "t2", "huber", "ghuber"] = "ghuber"
    ghuber_power: float = 0.25
    #: advantages are clipped to ±advantage.clip_max, then rescaled to ±advantage_max
    advantage_max: float = 1.0
    #: velocity KL to the reference model
    kl_beta: float = 0.001
    #: KL to the EMA adapter (0 disables it and the second adapter)
    ema_beta: float = 1.0
    ema_decay_max: float = 0.3
    ema_decay_rate: float = 0.001
    #: stratified: schedule indices of the rollout; adapter: the adapter's training-time distribution
    time_sampling: Literal["stratified", "adapter"] = "stratified"


def awm_log_likelihood(m: torch.Tensor, t: torch.Tensor, weighting: str, power: float = 0.25) -> torch.Tensor:
    """The AWM surrogate ``ℓ(m, t)`` for per-sample squared errors ``m`` and noise levels ``t`` in [0, 1]."""
    m = m.double()
    t = t.double()
    if weighting == "uniform":
        return -m
    if weighting == "t":
        return -t * m
    if weighting == "t2":
        return -(t**2) * m
    if weighting == "huber":
        return -t * (torch.sqrt(m + GHUBER_EPS) - GHUBER_EPS**0.5)
    if weighting == "ghuber":
        return -t * ((m + GHUBER_EPS) ** power - GHUBER_EPS**power) / power
    raise ValueError(f"unknown AWM weighting {weighting!r}")


def stratified_indices(count: int, last: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` integers, one uniform draw per stratum of ``linspace(1, last, count+1)``."""
    bounds = torch.linspace(1, last, count + 1)
    lows = bounds[:-1].long()
    highs = torch.maximum(bounds[1:].long(), lows + 1)
    u = torch.rand(count, generator=generator)
    return lows + (u * (highs - lows)).long()


@register_algorithm
class AWM(Algorithm):
    name = "awm"
    config_class = AWMConfig
    needs_log_probs = False
    default_advantage_mode = "group"
    drop_zero_refused = "AWM trains on every sample, as its reference implementation does"

    def validate(self) -> None:
        super().validate()
        c = self.cfg
        if c.train_timesteps < 1:
            raise ConfigError(f"awm.train_timesteps must be >= 1, got {c.train_timesteps}")
        # stratified sampling needs an index after the pure-noise one (index 0)
        self.steps_from_fraction(minimum=2 if c.time_sampling == "stratified" else 1)
        if c.ghuber_power <= 0:
            raise ConfigError(f"awm.ghuber_power must be positive, got {c.ghuber_power}")
        if min(c.kl_beta, c.ema_beta) < 0:
            raise ConfigError("awm.kl_beta and awm.ema_beta must be >= 0")
        t = self.config.train
        if t.inner_epochs != 1 or t.updates_per_epoch != 1:
            raise ConfigError(
                f"AWM trains strictly on-policy, one optimizer step per epoch: train.inner_epochs = {t.inner_epochs} "
                f"and train.updates_per_epoch = {t.updates_per_epoch} must both be 1"
            )

    def last_index(self) -> int:
        return self.steps_from_fraction(minimum=0)

    def micro_steps_per_batch(self) -> int:
        return 1  # all K timesteps of a train batch go through one forward pass

    def updates_per_pass(self) -> int:
        return 1

    # ------------------------------------------------------------------- EMA anchor
    def setup(self, trainer) -> None:
        super().setup(trainer)
        if self.cfg.ema_beta > 0:
            self.adapter.save_snapshot("ema")

    def after_epoch(self, epoch: int, global_step: int) -> None:
        if self.cfg.ema_beta <= 0:
            return
        decay = min(self.cfg.ema_decay_max, self.cfg.ema_decay_rate * global_step)
        current = self.adapter.trainable_named_parameters()
        with torch.no_grad():
            for name, ema in self.adapter.snapshot_weights("ema").items():
                ema.mul_(decay).add_(current[name].detach(), alpha=1 - decay)

    # -------------------------------------------------------------------------- loss
    def prepare_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        return advantages * (self.cfg.advantage_max / self.config.advantage.clip_max)

    def micro_batches(self, batch: Rollout, epoch: int, inner_epoch: int):
        k = self.cfg.train_timesteps
        indices, noises = [], []
        shape = batch.final_latents.shape[1:]
        for g in batch.extras["sample_index"].tolist():
            gen = self.generator("train", epoch, inner_epoch, int(g))
            if self.cfg.time_sampling == "stratified":
                indices.append(stratified_indices(k, self.last_index(), gen))
            noises.append(torch.randn((k, *shape), generator=gen))
        device = batch.final_latents.device
        if self.cfg.time_sampling == "stratified":
            timesteps = batch.timesteps.cpu()[torch.stack(indices)].to(device)  # [B, K]
        else:
            gens = [self.generator("t", epoch, inner_epoch, int(g), j)
                    for g in batch.extras["sample_index"].tolist() for j in range(k)]
            timesteps = self.adapter.sample_training_timesteps(batch.batch_size * k, generator=gens)
            timesteps = timesteps.reshape(batch.batch_size, k).to(device)
        yield batch, timesteps, torch.stack(noises).to(device)

    def loss(self, micro):
        from diffalign.pipelines.base import slice_cond

        batch, timesteps, noise = micro
        adapter = self.adapter
        b, k = timesteps.shape
        repeat = torch.arange(b).repeat_interleave(k)
        x0 = batch.final_latents[repeat.to(batch.final_latents.device)].float()
        noise = noise.reshape(b * k, *noise.shape[2:]).to(x0)
        t = timesteps.reshape(-1)
        x_t = adapter.add_noise(x0, noise, t)
        conditioning = {"cond": slice_cond(batch.conditioning["cond"], repeat.to(batch.latents.device)), "uncond": None}
        errors = denoising_errors(adapter, x0, noise, t, conditioning, x_t=x_t, reference=None)
        prediction, m = errors.prediction, errors.policy
        t_unit = t.double() / getattr(adapter, "num_train_timesteps", 1000)
        ell = awm_log_likelihood(m, t_unit, self.cfg.weighting, self.cfg.ghuber_power)
        advantages = batch.extras["advantages"].to(ell.device).double().repeat_interleave(k)
        policy_loss = -(advantages * ell).mean()
        loss = policy_loss.float()
        stats = {"policy_loss": policy_loss.detach().float(), "matching_mse": m.detach().mean().float()}
        if self.cfg.kl_beta > 0:
            with adapter.reference():
                ref = adapter.predict(x_t, t, conditioning, guidance_scale=1.0)
            kl = ((prediction.float() - ref.float()) ** 2).mean()
            loss = loss + self.cfg.kl_beta * kl
            stats["kl"] = kl.detach()
        if self.cfg.ema_beta > 0:
            with adapter.snapshot("ema"):
                ema = adapter.predict(x_t, t, conditioning, guidance_scale=1.0)
            kl_ema = ((prediction.float() - ema.float()) ** 2).mean()
            loss = loss + self.cfg.ema_beta * kl_ema
            stats["kl_ema"] = kl_ema.detach()
        return loss, stats
