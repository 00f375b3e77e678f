"""Reward backpropagation: DRaFT-K / DRaFT-LV, AlignProp and ReFL (ALGORITHMS.md §13).

The reward ``r`` must be differentiable in the media. The loss samples with gradients
(:meth:`PipelineAdapter.sample` with ``grad_steps``), decodes differentiably, scores and backpropagates
``L = mean_b ℓ(r_b)`` straight into the denoiser's trainable weights: no log-probs, no advantages, no
reference. There are no rollouts to collect: :meth:`RewardBackprop.collect` gives the epoch's prompts and
every backward pass samples its own trajectories.

The shaping ``ℓ`` (``[name].loss``, with ``target`` ``c`` and ``loss_scale`` ``λ``):

* ``"linear"``: ``ℓ = λ (c - r)``, i.e. ``-λ r`` with ``c = 0`` (DRaFT), ``1 - r`` for HPS (AlignProp);
* ``"abs"``: ``ℓ = λ |c - r|`` (AlignProp's aesthetic loss, ``c = 10``, ``λ = 0.01``);
* ``"relu"``: ``ℓ = λ max(0, c - r)`` (ReFL, ``c = 2``, ``λ = 1e-3``).

Algorithms:

* **DRaFT-K** (Clark et al. 2023): ``x_0 = Φ_θ(x_T)`` with gradients only through the last ``K`` sampler steps
  (``draft.k``; ``K = 1`` works best). **DRaFT-LV** (``draft.lv_loops = n``, ``K = 1`` only): after ``x_0``,
  ``n`` times re-noise it to the last step's level, ``x'_1 = add_noise(sg(x_0), ε_j, t_1)``, denoise with
  the last step, ``x'_0 = Φ^{(1)}_θ(x'_1)``; the loss averages ``ℓ`` over the ``n + 1`` images.
* **AlignProp** (Prabhudesai et al. 2023): the truncation point ``k ~ round(N(42, 5²))``, redrawn until
  ``1 <= k <= 49``, on the official 50-step schedule, scaled to ``S`` steps ``k_S = round(k S / 50)``; steps
  ``i < k_S`` are detached, the last ``S - k_S`` carry gradient. It is drawn **once per trajectory** (per
  sample, from the sample's own generator), as the official repo does; TRL's per-step redraw is not copied.
  ``alignprop.truncation = "uniform"`` draws ``k ~ U{0..49}``, ``"fixed"`` uses ``fixed_step`` (49: K = 1).
* **ReFL** (Xu et al. 2023, ImageReward): on an ``S``-step schedule draw ``m ~ U{⌊f S⌋ .. S-1}``
  (``refl.min_step_fraction = f``; official ``S = 40``, ``m ∈ 30..39``) once per batch, run steps ``0..m-1``
  without gradient, predict at step ``m`` with gradient and take the one-step estimate
  ``x̂_0 = predicted_x0(ε̂_θ(x_{t_m}, t_m), x_{t_m}, t_m)``; ``L = mean λ ReLU(c - r(D(x̂_0)))``. The paper's
  pre-training loss (§4.2, not in the official script) is ``refl.pretrain_weight = w > 0`` with ``[data]``
  (captioned media, e.g. experts): ``L + w · L_pre``, ``L_pre`` the denoising loss on one data example per
  prompt (:mod:`.real_data`). The paper's Algorithm 1 takes an update on ``L_pre`` and one on the reward in
  turn; here one update takes their sum (the same to first order in the learning rate, and one loop step).

``[name].checkpoint_denoiser`` recomputes each kept denoiser call in the backward pass (needed beyond
``K ≈ 2`` at 512², §13.6).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from diffalign.config import ConfigError, register_section
from diffalign.rollout import _map_tensors, cat_field

from .base import Algorithm, register_algorithm
from .real_data import RealDataLoss

__all__ = [
    "AlignProp", "AlignPropConfig", "DRaFT", "DRaFTConfig", "PromptBatch", "ReFL", "ReFLConfig", "RewardBackprop",
    "alignprop_truncation_step", "check_differentiable_reward", "reward_loss",
]

LOSS_KINDS = ("linear", "abs", "relu")


def reward_loss(rewards: torch.Tensor, kind: str, target: float, scale: float) -> torch.Tensor:
    """Per-sample ``ℓ(r)``: ``λ (c - r)``, ``λ |c - r|`` or ``λ max(0, c - r)`` (see the module docstring)."""
    gap = target - rewards
    if kind == "linear":
        return scale * gap
    if kind == "abs":
        return scale * gap.abs()
    if kind == "relu":
        return scale * torch.relu(gap)
    raise ValueError(f"unknown reward loss {kind!r}; use one of {LOSS_KINDS}")


def check_differentiable_reward(reward: Any, algorithm: str, options: dict[str, Any] | None = None) -> None:
    """Refuse a reward whose gradient cannot reach the media, naming the scorer (before any model loads).

    ``reward`` is a scorer spec (each part's registered class is checked, nothing is built) or a callable,
    which must carry ``differentiable = True`` (every :class:`~diffalign.scorers.Scorer` says whether it is).
    """
    if isinstance(reward, str):
        from diffalign.scorers import SCORERS, parse_spec

        bad = [name for name, _ in parse_spec(reward)
               if name in SCORERS and not getattr(SCORERS.get(name), "differentiable", False)]
        if bad:
            raise ConfigError(f"{algorithm} backpropagates the reward, but scorer {', '.join(map(repr, bad))} of "
                              f"reward.spec {reward!r} is not differentiable; differentiable scorers: "
                              f"{', '.join(differentiable_scorers()) or 'none'}")
        return
    if not getattr(reward, "differentiable", False):
        name = getattr(reward, "name", None) or getattr(reward, "__name__", type(reward).__name__)
        raise ConfigError(f"{algorithm} backpropagates the reward, but reward {name!r} is not differentiable "
                          f"(it has no differentiable = True)")


def differentiable_scorers() -> list[str]:
    from diffalign.scorers import SCORERS

    return [n for n in SCORERS.names() if getattr(SCORERS.get(n), "differentiable", False)]


@dataclass
class PromptBatch:
    """An epoch's prompts and their global sample indices (which seed each sample's noise); ``extras`` are
    per-prompt tensors split and moved with them (ReFL's pre-training examples)."""

    prompts: list[str]
    sample_index: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index) -> "PromptBatch":
        rows = torch.arange(self.batch_size)[index]
        rows = rows.reshape(-1)
        return PromptBatch([self.prompts[i] for i in rows.tolist()], self.sample_index[rows],
                           _map_tensors(self.extras, lambda v: v[rows.to(v.device)]))

    def to(self, device: torch.device | str) -> "PromptBatch":
        return PromptBatch(self.prompts, self.sample_index, _map_tensors(self.extras, lambda v: v.to(device)))

    @staticmethod
    def cat(parts: Sequence["PromptBatch"]) -> "PromptBatch":
        return PromptBatch([p for part in parts for p in part.prompts], torch.cat([part.sample_index for part in parts]),
                           cat_field([part.extras for part in parts]))


@dataclass
class RewardBackpropConfig:
    """What every reward-backprop section holds (each algorithm sets its own defaults)."""

    loss: Literal["linear", "abs", "relu"] = "linear"
    target: float = 0.0
    loss_scale: float = 1.0
    checkpoint_denoiser: bool = False


class RewardBackprop(Algorithm):
    """Base of the reward-backpropagation trainers; subclasses implement :meth:`backprop_loss`."""

    needs_log_probs = False
    default_advantage_mode = None
    drop_zero_refused = "reward backpropagation has no advantages"

    def validate(self) -> None:
        super().validate()
        c = self.cfg
        if c.loss not in LOSS_KINDS:
            raise ConfigError(f"{self.name}.loss must be one of {LOSS_KINDS}, got {c.loss!r}")
        for key in ("target", "loss_scale"):
            if not math.isfinite(getattr(c, key)):
                raise ConfigError(f"{self.name}.{key} must be a finite number, got {getattr(c, key)}")
        if c.loss_scale <= 0:
            raise ConfigError(f"{self.name}.loss_scale must be positive, got {c.loss_scale}")

    def check_reward(self, reward: Any) -> None:
        check_differentiable_reward(reward, self.name)

    def micro_steps_per_batch(self) -> int:
        return 1

    # ------------------------------------------------------------------------------ data
    def collect(self, epoch: int) -> PromptBatch:
        """This process's prompts of the epoch (no sampling here: the loss samples with gradients)."""
        trainer = self.trainer
        s = self.config.sampling
        acc = trainer.accelerator
        parts = []
        for _ in range(s.batches_per_epoch):
            counter = trainer.prompt_sampler.counter
            prompts = trainer.prompt_sampler.next_batch()
            start = counter * s.batch_size * acc.num_processes + acc.process_index * s.batch_size
            parts.append(PromptBatch(list(prompts), torch.arange(start, start + len(prompts))))
        return PromptBatch.cat(parts)

    def epoch_stats(self, batch: PromptBatch) -> dict[str, Any]:
        return {}

    def micro_batches(self, batch: PromptBatch, epoch: int, inner_epoch: int):
        yield batch, epoch, inner_epoch

    def sample_generators(self, batch: PromptBatch, epoch: int, inner_epoch: int) -> list[torch.Generator]:
        """One generator per sample, seeded by ``(seed, epoch, inner epoch, global sample index)``."""
        return [self.generator("sample", epoch, inner_epoch, int(i)) for i in batch.sample_index.tolist()]

    def sample_with_grad(self, prompts: list[str], generators, **options):
        """``adapter.sample`` with the ``[sampling]`` settings and gradients (``options`` add the window)."""
        s = self.config.sampling
        return self.adapter.sample(
            prompts, steps=s.steps, guidance_scale=s.guidance_scale, generator=generators,
            negative_prompts=s.negative_prompt or None, stochastic=s.stochastic, eta=s.eta, noise_level=s.noise_level,
            log_probs=False, height=s.height, width=s.width, num_frames=s.num_frames, with_grad=True,
            checkpoint_denoiser=self.cfg.checkpoint_denoiser, **options,
        )

    def score(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The reward with its graph (the trainer's own ``score`` runs without gradients)."""
        rewards = self.trainer.reward(media, list(prompts)).reshape(-1)
        if rewards.shape[0] != len(prompts):
            raise ValueError(f"reward returned {rewards.shape[0]} values for {len(prompts)} samples")
        return rewards

    def shaped(self, rewards: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return reward_loss(rewards, c.loss, c.target, c.loss_scale)

    def loss(self, micro) -> tuple[torch.Tensor, dict[str, Any]]:
        batch, epoch, inner_epoch = micro
        rewards, loss, stats = self.backprop_loss(batch, epoch, inner_epoch)
        detached = rewards.detach().float()
        return loss, {"reward_mean": detached.mean(), "reward_std": detached.std(unbiased=False), **stats}

    def backprop_loss(self, batch: PromptBatch, epoch: int, inner_epoch: int
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """``(rewards [B], loss, extra stats)`` for one train batch."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- DRaFT
@register_section("draft")
@dataclass
class DRaFTConfig(RewardBackpropConfig):
    #: gradient through the last k sampler steps (DRaFT-K; 1 is the paper's best trade-off)
    k: int = 1
    #: DRaFT-LV: extra re-noise / denoise loops of the last step (needs k = 1); 0 is DRaFT-K
    lv_loops: int = 0


@register_algorithm
class DRaFT(RewardBackprop):
    name = "draft"
    config_class = DRaFTConfig

    def validate(self) -> None:
        super().validate()
        c, steps = self.cfg, self.config.sampling.steps
        if not isinstance(c.k, int) or not 1 <= c.k <= steps:
            raise ConfigError(f"draft.k must be an integer in [1, sampling.steps = {steps}], got {c.k!r}")
        if not isinstance(c.lv_loops, int) or c.lv_loops < 0:
            raise ConfigError(f"draft.lv_loops must be a non-negative integer, got {c.lv_loops!r}")
        if c.lv_loops and c.k != 1:
            raise ConfigError(f"draft.lv_loops = {c.lv_loops} (DRaFT-LV) needs draft.k = 1, got {c.k}")

    def backprop_loss(self, batch, epoch, inner_epoch):
        generators = self.sample_generators(batch, epoch, inner_epoch)
        rollout = self.sample_with_grad(batch.prompts, generators, grad_steps=self.cfg.k)
        rewards = self.score(rollout.media, batch.prompts)
        losses = [self.shaped(rewards)]
        if self.cfg.lv_loops:
            x0 = rollout.latents[:, -1].detach()
            last = self.config.sampling.steps - 1
            t_last = rollout.timesteps[last]
            for _ in range(self.cfg.lv_loops):
                noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators]).to(x0.device, x0.dtype)
                renoised = self.adapter.add_noise(x0, noise, t_last.expand(x0.shape[0]))
                again = self.sample_with_grad(batch.prompts, generators, latents=renoised, from_step=last,
                                              conditioning=rollout.conditioning)
                losses.append(self.shaped(self.score(again.media, batch.prompts)))
        loss = torch.stack(losses).mean()
        return rewards, loss, {}


# --------------------------------------------------------------------------------------- AlignProp
@register_section("alignprop")
@dataclass
class AlignPropConfig(RewardBackpropConfig):
    loss: Literal["linear", "abs", "relu"] = "abs"
    target: float = 10.0
    loss_scale: float = 0.01
    checkpoint_denoiser: bool = True
    truncation: Literal["gaussian", "uniform", "fixed"] = "gaussian"
    #: the official truncation law on its 50-step schedule: round(N(mean, std²)) in [1, 49]
    truncation_mean: float = 42.0
    truncation_std: float = 5.0
    reference_steps: int = 50
    #: ``truncation = "fixed"``: the first step with gradient on the reference schedule (49: only the last)
    fixed_step: int = 49


def alignprop_truncation_step(rng: random.Random, steps: int, truncation: str = "gaussian", mean: float = 42.0,
                              std: float = 5.0, reference_steps: int = 50, fixed_step: int = 49) -> int:
    """AlignProp's first step with gradient ``k_S`` on an ``steps``-step schedule (see the module docstring);
    always leaves at least one step with gradient: ``0 <= k_S <= steps - 1``."""
    if truncation == "gaussian":
        while True:
            k = round(rng.gauss(mean, std))
            if 1 <= k <= reference_steps - 1:
                break
    elif truncation == "uniform":
        k = rng.randint(0, reference_steps - 1)
    elif truncation == "fixed":
        k = fixed_step
    else:
        raise ValueError(f"unknown truncation {truncation!r}; use 'gaussian', 'uniform' or 'fixed'")
    return min(max(round(k * steps / reference_steps), 0), steps - 1)


@register_algorithm
class AlignProp(RewardBackprop):
    name = "alignprop"
    config_class = AlignPropConfig

    def validate(self) -> None:
        super().validate()
        c = self.cfg
        if c.reference_steps < 2:
            raise ConfigError(f"alignprop.reference_steps must be >= 2, got {c.reference_steps}")
        if not 0 <= c.fixed_step < c.reference_steps:
            raise ConfigError(f"alignprop.fixed_step must be in [0, {c.reference_steps}), got {c.fixed_step}")
        if c.truncation == "gaussian" and (c.truncation_std <= 0 or not 1 <= c.truncation_mean <= c.reference_steps - 1):
            raise ConfigError(f"alignprop.truncation_mean must lie in [1, {c.reference_steps - 1}] and truncation_std be "
                              f"positive, got {c.truncation_mean} and {c.truncation_std}")

    def truncation_steps(self, batch: PromptBatch, epoch: int, inner_epoch: int) -> torch.Tensor:
        """Each trajectory's first step with gradient ``[B]``, drawn once from its own seed."""
        c, steps = self.cfg, self.config.sampling.steps
        from ..prompts import derive_seed

        return torch.tensor([
            alignprop_truncation_step(random.Random(derive_seed(self.config.run.seed, self.name, "truncation", epoch,
                                                                inner_epoch, int(i))),
                                      steps, c.truncation, c.truncation_mean, c.truncation_std, c.reference_steps,
                                      c.fixed_step)
            for i in batch.sample_index.tolist()
        ])

    def backprop_loss(self, batch, epoch, inner_epoch):
        first = self.truncation_steps(batch, epoch, inner_epoch)
        rollout = self.sample_with_grad(batch.prompts, self.sample_generators(batch, epoch, inner_epoch),
                                        grad_steps=self.config.sampling.steps - first)
        rewards = self.score(rollout.media, batch.prompts)
        return rewards, self.shaped(rewards).mean(), {"truncation_step": first.float().mean()}


# -------------------------------------------------------------------------------------------- ReFL
@register_section("refl")
@dataclass
class ReFLConfig(RewardBackpropConfig):
    loss: Literal["linear", "abs", "relu"] = "relu"
    target: float = 2.0
    loss_scale: float = 1e-3
    #: the gradient step m is drawn from floor(fraction x steps) .. steps - 1 (official 30..39 of 40)
    min_step_fraction: float = 0.75
    #: weight w of the paper's pre-training loss on [data] examples (0: off, as the official script)
    pretrain_weight: float = 0.0


@register_algorithm
class ReFL(RewardBackprop):
    name = "refl"
    config_class = ReFLConfig

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.cfg.min_step_fraction < 1:
            raise ConfigError(f"refl.min_step_fraction must be in [0, 1), got {self.cfg.min_step_fraction}")
        self.pretrain = RealDataLoss(self, self.cfg.pretrain_weight, "refl.pretrain_weight", "pretrain")
        self.pretrain.validate(self.samples_per_epoch(), "the epoch's prompts (sampling.batch_size x batches_per_epoch)")

    def setup(self, trainer) -> None:
        super().setup(trainer)
        self.pretrain.setup()

    def collect(self, epoch: int) -> PromptBatch:
        batch = super().collect(epoch)
        self.pretrain.attach(batch.extras)
        return batch.to(self.trainer.accelerator.device)

    def state_dict(self) -> dict[str, Any]:
        return {"pretrain_data": self.pretrain.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pretrain.load_state_dict(state.get("pretrain_data"))

    def gradient_step(self, batch: PromptBatch, epoch: int, inner_epoch: int) -> int:
        """The batch's step ``m`` (one draw per batch, as the official script)."""
        from ..prompts import derive_seed

        steps = self.config.sampling.steps
        low = min(int(self.cfg.min_step_fraction * steps), steps - 1)
        rng = random.Random(derive_seed(self.config.run.seed, self.name, "step", epoch, inner_epoch,
                                        int(batch.sample_index[0])))
        return rng.randint(low, steps - 1)

    def backprop_loss(self, batch, epoch, inner_epoch):
        mid = self.gradient_step(batch, epoch, inner_epoch)
        # steps 0..mid-1 without gradient, step mid with it; its guided prediction gives x̂0 (the step's own
        # transition to mid + 1 is not used)
        rollout = self.sample_with_grad(batch.prompts, self.sample_generators(batch, epoch, inner_epoch),
                                        until_step=mid + 1, grad_steps=1, decode=False, return_predictions=True)
        x, t = rollout.latents[:, mid].detach(), rollout.timesteps[mid]
        x0 = self.adapter.predicted_x0(rollout.extras["predictions"][:, mid], x, t)
        rewards = self.score(self.adapter.decode(x0), batch.prompts)
        loss, stats = self.pretrain.add_to(self.shaped(rewards).mean(), {"gradient_step": float(mid)}, batch.extras,
                                           batch.sample_index, "pretrain_loss")
        return rewards, loss, stats
