"""SmPO-Diffusion: smoothed preference optimisation with ReNoise inversion (Lu et al., 2025, arXiv 2506.02698).

Two changes to Diffusion-DPO. (1) Smoothed labels: with ``p = P(x^w ≻ x^l)`` from a reward model (the
data's soft label, e.g. ``diffalign prefs relabel``), the smoothed densities
``p̃(x^w) ∝ p(x^w)^α p(x^l)^(γ-α)`` turn DPO into
``L = -E log σ((2α-γ)·β·[log p_θ/p_ref (x^w) - log p_θ/p_ref (x^l)])``; the official code takes ``α = p``,
``γ = 1`` and an extra factor 10, so with denoising errors ``e``

``L = -mean log σ(-(β/2)·s·(2p-1)·[(e_θ^w - e_ref^w) - (e_θ^l - e_ref^l)])``, ``s = label_scale = 10``,

which vanishes for a tie (``p = ½``). (2) ``x_t`` by inversion instead of forward noising: each image is
inverted with the *current* policy under no_grad (DDIM inversion, or reverse Euler for flow models) along an
``inversion_steps``-step schedule with ``renoise_iterations`` ReNoise refinements, stopping at the pair's
timestep; the target noise is the one the inverted point implies, ``ε̃ = (x_t - sqrt(ᾱ_t) x0)/sqrt(1-ᾱ_t)``
(flow: ``(x_t - (1-σ) x0)/σ``), shared by policy and reference. ``smpo.inversion_model = "reference"`` inverts with
the frozen reference instead (ours, not the paper's: the target then stays fixed while the policy learns).

Where ``t`` and ``x_t`` come from (``smpo.timesteps``):

* ``"official"`` (default, as the official code): ``t`` is the adapter's training timestep (Diffusion-DPO's:
  ``U{0..T-1}`` on the VP families), and ``x0`` is inverted through every schedule step *below* ``t``, so
  the point ``x_s`` lies at the schedule's noise level ``s < t`` (``x0`` itself when no step is below ``t``)
  while the target and the denoiser use ``t``: ``ε̃ = (x_s - sqrt(ᾱ_t) x0)/sqrt(1-ᾱ_t)``. The gap carries an
  ``x0`` term into ``ε̃``; on ShapesWorld it is what makes the loss rise (see ``smpo_shapes``).
* ``"schedule"`` (ours): ``t`` is drawn from the inversion schedule itself, so ``x_t`` lies exactly at ``t``.
  The target is then the inverting model's own path: at the first inverse step ``ε̃`` is the policy's own
  prediction and its error is zero, and on ShapesWorld the held-out score falls.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from diffalign.config import ConfigError, register_section

from .base import denoising_errors, register_algorithm
from .dpo import dpo_loss, pair_error_stats
from .preference import PreferenceAlgorithm, pair_layout, split_pairs


@register_section("smpo")
@dataclass
class SmPOConfig:
    #: official SD 1.5 launcher 2000, SDXL 5000
    beta: float = 2000.0
    #: the official code's extra factor on (2p - 1)
    label_scale: float = 10.0
    #: DDIM inversion schedule (official: 10 steps)
    inversion_steps: int = 10
    #: ReNoise refinements per inverse step (official: one averaged re-prediction)
    renoise_iterations: int = 1
    #: the model that inverts: "policy" (the official code: the current, trained weights, so the target moves
    #: as the policy learns) or "reference" (the frozen reference: each image's ``x_t`` stays fixed)
    inversion_model: str = "policy"
    #: "official" (t from the training distribution, x_t inverted through the schedule steps below t) or
    #: "schedule" (t one of the inversion schedule's timesteps, x_t exactly at t); see the module docstring
    timesteps: str = "official"


@register_algorithm
class SmPO(PreferenceAlgorithm):
    name = "smpo"
    config_class = SmPOConfig
    data_kind = "pairs"

    def validate(self) -> None:
        super().validate()
        c = self.cfg
        if not c.beta > 0 or not c.label_scale > 0:
            raise ConfigError(f"smpo.beta and smpo.label_scale must be positive, got {c.beta} and {c.label_scale}")
        if c.inversion_model not in ("policy", "reference"):
            raise ConfigError(f"smpo.inversion_model must be 'policy' or 'reference', got {c.inversion_model!r}")
        if c.timesteps not in ("official", "schedule"):
            raise ConfigError(f"smpo.timesteps must be 'official' or 'schedule', got {c.timesteps!r}")
        if c.inversion_steps < 1 or c.renoise_iterations < 0:
            raise ConfigError(f"smpo.inversion_steps must be >= 1 and smpo.renoise_iterations >= 0, "
                              f"got {c.inversion_steps} and {c.renoise_iterations}")

    def micro_batches(self, batch, epoch: int, inner_epoch: int):
        """Per pair: the timestep ``t`` and the schedule index the inversion stops at (``inversion_steps``: none)."""
        steps = self.cfg.inversion_steps
        grid = self.adapter._schedule(steps, latents=batch.latents[:, 0].float())["timesteps"].cpu()
        if self.cfg.timesteps == "schedule":
            stops = torch.tensor([int(torch.randint(0, steps, (1,), generator=self.generator("t", epoch, inner_epoch, int(i))))
                                  for i in batch.extras["sample_index"].tolist()])
            yield batch, grid[stops].to(batch.latents.device), stops
            return
        t, _ = self.draw_timesteps_and_noise(batch, epoch, inner_epoch)
        # the schedule runs from high to low noise: the steps below t are the indices from the first one under t
        below = grid[None, :] < t.cpu()[:, None].to(grid)
        stops = torch.where(below.any(dim=1), below.float().argmax(dim=1), torch.full_like(t.cpu(), steps, dtype=torch.long))
        yield batch, t, stops

    def inverted(self, x0: torch.Tensor, conditioning, stops: torch.Tensor) -> torch.Tensor:
        """Each latent inverted (with ``smpo.inversion_model``) down to its schedule index; ``x0`` where the index
        is ``inversion_steps`` (no schedule step to invert through)."""
        adapter, c = self.adapter, self.cfg
        x_t = x0.clone()
        from diffalign.pipelines.base import slice_cond

        for k in stops.unique().tolist():
            if k >= c.inversion_steps:
                continue
            rows = (stops == k).nonzero().flatten().to(x0.device)
            cond = {"cond": slice_cond(conditioning["cond"], rows), "uncond": None}
            model = adapter.reference() if c.inversion_model == "reference" else contextlib.nullcontext()
            with torch.no_grad(), model:
                rollout = adapter.invert(x0[rows], cond, steps=c.inversion_steps, guidance_scale=1.0,
                                         renoise_iterations=c.renoise_iterations, until_step=int(k))
            x_t[rows] = rollout.latents[:, 0].to(x0.dtype)
        return x_t

    def loss(self, micro):
        batch, t, stops = micro
        x0 = pair_layout(batch.latents).float()
        conditioning = self.paired_conditioning(batch)
        x_t = self.inverted(x0, conditioning, torch.cat([stops, stops]))
        t = torch.cat([t, t]).to(x0.device)
        noise = self.adapter.implied_noise(x0, x_t, t)
        errors = denoising_errors(self.adapter, x0, noise, t, conditioning, x_t=x_t, reference="base")
        policy_w, policy_l = split_pairs(errors.policy)
        ref_w, ref_l = split_pairs(errors.reference)
        labels = batch.labels.to(policy_w).reshape(-1)
        scale = self.cfg.label_scale * (2 * labels - 1)
        losses, inside = dpo_loss(policy_w, policy_l, ref_w, ref_l, self.cfg.beta, scale)
        return losses.mean().float(), {**pair_error_stats(errors, inside), "soft_label": labels.mean().float()}
