"""SePPO (Zhang et al., 2024, arXiv 2410.05255; v2 "SSPO"): preference optimisation from winners only.

No losers are stored: for each winner ``x^w`` of prompt ``c`` a reference sample ``x^r`` is generated for the
same prompt by a reference model drawn uniformly from a pool of past checkpoints (:class:`CheckpointPool`,
``ref ~ U[0, k-1]``; the pool starts with the initial model, gains one snapshot every ``pool_every`` optimizer
updates and keeps the last ``pool_size``); the drawn snapshot is also the loss's reference. Winner and
reference sample share ``t`` and ``ε``; with denoising errors ``e`` (model's own prediction space) and
``Δ = e_θ - e_ref``,

``inside = -(β/2)·[Δ(x^w) - s·Δ(x^r)]``, ``L = -mean log σ(inside)``,

where the Anchor-based Adaptive Flipper sets ``s`` from one Monte-Carlo draw on the winner (the anchor):
``flipper = "sign"``: ``s = +1`` when ``e_θ(x^w) < e_ref(x^w)`` (the current model fits the winner better
than the reference, so the reference sample is treated as a loser: Diffusion-DPO), else ``s = -1`` (a second
positive: both errors are pushed down); ``"indicator"``: ``s = 1(e_ref(x^w) - e_θ(x^w) > 0)`` (0: DPO on the
winner alone); ``"none"``: ``s = +1`` (plain DPO against the reference sample, the paper's ablation). ``s``
is detached. Logged: ``aaf_rate``, the fraction of examples whose reference sample is not treated as a
loser (``s != +1``), and the implicit accuracy.

One reference is drawn per collected batch (seeded by the epoch, the same on every process), so all updates of
an epoch share it. Unverified (never published): β, learning rate and the reference sampler (steps, CFG);
the recipes use Diffusion-DPO's SD 1.5 values. The direction of ``s`` follows the paper's reviews (Eq. 8 not
read in the PDF).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from diffalign.config import ConfigError, register_section

from .base import denoising_errors, register_algorithm
from .dpo import implicit_accuracy
from .pool import CheckpointPool
from .preference import PreferenceAlgorithm, split_pairs


@register_section("seppo")
@dataclass
class SePPOConfig:
    #: unverified: Diffusion-DPO's SD 1.5 value (SePPO's β was never published)
    beta: float = 5000.0
    #: paper: K = 7 checkpoints, one every 30 updates
    pool_size: int = 7
    pool_every: int = 30
    flipper: Literal["sign", "indicator", "none"] = "sign"
    #: the reference sampler (unverified: not published)
    sample_steps: int = 20
    sample_guidance_scale: float = 7.5
    sample_stochastic: bool = False


def flipper_sign(policy_w: torch.Tensor, ref_w: torch.Tensor, flipper: str) -> torch.Tensor:
    """The AAF's ``s`` per example from the anchor's errors (detached)."""
    better = (ref_w - policy_w).detach() > 0
    if flipper == "sign":
        return torch.where(better, 1.0, -1.0).to(policy_w)
    if flipper == "indicator":
        return better.to(policy_w)
    return torch.ones_like(policy_w)


def seppo_loss(policy_w, policy_r, ref_w, ref_r, beta: float, flipper: str = "sign"):
    """Per example ``-log σ(-(β/2)·[(e_θ^w - e_ref^w) - s·(e_θ^r - e_ref^r)])``; returns (loss, inside, s)."""
    s = flipper_sign(policy_w, ref_w, flipper)
    inside = -0.5 * beta * ((policy_w - ref_w) - s * (policy_r - ref_r))
    return -F.logsigmoid(inside), inside, s


@register_algorithm
class SePPO(PreferenceAlgorithm):
    name = "seppo"
    config_class = SePPOConfig
    data_kind = "winners"

    def validate(self) -> None:
        super().validate()
        c = self.cfg
        if not c.beta > 0:
            raise ConfigError(f"seppo.beta must be positive, got {c.beta}")
        if c.pool_size <= 0 or c.pool_every <= 0:
            raise ConfigError(f"seppo.pool_size and seppo.pool_every must be positive, got {c.pool_size}, {c.pool_every}")
        if c.flipper not in ("sign", "indicator", "none"):
            raise ConfigError(f"seppo.flipper must be sign, indicator or none, got {c.flipper!r}")
        if c.sample_steps <= 0:
            raise ConfigError(f"seppo.sample_steps must be positive, got {c.sample_steps}")

    def setup(self, trainer) -> None:
        super().setup(trainer)
        self.pool = CheckpointPool(self.adapter, every=self.cfg.pool_every, size=self.cfg.pool_size, prefix="seppo/pool")
        self.pool.start()
        self.current_reference: str | None = None

    def after_update(self, global_step: int) -> None:
        self.pool.after_update(global_step)

    # ------------------------------------------------------------------------------- data
    def reference_samples(self, prompts: list[str], positions: list[int], name: str) -> torch.Tensor:
        """Clean latents of one sample per prompt from snapshot ``name`` (each seeded by its draw position)."""
        adapter, c, s = self.adapter, self.cfg, self.config.sampling
        gens = [self.generator("reference-sample", p) for p in positions]
        latents = torch.cat([adapter.prepare_latents(1, g, height=s.height, width=s.width, num_frames=s.num_frames)
                             for g in gens])
        with adapter.snapshot(name):
            rollout = adapter.sample(prompts, steps=c.sample_steps, guidance_scale=c.sample_guidance_scale,
                                     generator=gens if c.sample_stochastic else None,
                                     negative_prompts=s.negative_prompt or None, stochastic=c.sample_stochastic,
                                     eta=s.eta, noise_level=s.noise_level, log_probs=False, latents=latents,
                                     decode=False)
        return rollout.final_latents.float()

    def collect(self, epoch: int):
        batch = super().collect(epoch)
        self.current_reference = self.pool.draw(self.generator("reference", epoch))
        positions = [int(p) for p in batch.extras["sample_index"].tolist()]
        batch.extras["reference_latents"] = self.reference_samples(batch.prompts, positions, self.current_reference)
        return batch

    def epoch_stats(self, batch) -> dict[str, Any]:
        stats = super().epoch_stats(batch)
        stats["reference_index"] = int(self.current_reference.rsplit("/", 1)[1])
        stats["pool_size"] = len(self.pool.names)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("pool") is not None:
            self.pool.load_state_dict(state["pool"])

    # ------------------------------------------------------------------------------- loss
    def loss(self, micro):
        batch, t, noise = micro
        x0 = torch.cat([batch.latents.float(), batch.extras["reference_latents"].float()])
        errors = denoising_errors(self.adapter, x0, torch.cat([noise, noise]).to(x0), torch.cat([t, t]),
                                  self.paired_conditioning(batch), reference=self.current_reference)
        policy_w, policy_r = split_pairs(errors.policy)
        ref_w, ref_r = split_pairs(errors.reference)
        losses, inside, s = seppo_loss(policy_w, policy_r, ref_w, ref_r, self.cfg.beta, self.cfg.flipper)
        stats = {
            "aaf_rate": (s != 1).double().mean().float(),
            "implicit_acc": implicit_accuracy(inside.detach()).float(),
            "policy_err_winner": policy_w.detach().mean().float(), "ref_err_winner": ref_w.mean().float(),
            "policy_err_reference_sample": policy_r.detach().mean().float(),
            "ref_err_reference_sample": ref_r.mean().float(),
        }
        return losses.mean().float(), stats
