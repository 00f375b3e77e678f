"""Online collection: the default ``Algorithm.collect`` (DDPO, Flow-GRPO, AWM, and any algorithm that
samples its own training data).

Prompts come from the trainer's group sampler (the same seeded draw on every rank, each rank its slice);
every sample's noise comes from its own generator seeded by ``(seed, epoch, batch, global sample index)``,
so processes draw different noise, runs are reproducible, and the update does not depend on how the
global batch is split over processes. With ``sampling.same_latent`` the initial noise is seeded by
``(seed, epoch, prompt)`` instead, so a group shares it; with ``sampling.sde_window`` only a window of
steps, placed per epoch by ``(seed, epoch)``, is stochastic. Rewards come from the trainer's scorer;
advantages are computed over all processes and this rank's slice is kept.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch

from diffalign.rollout import Rollout

from .advantages import compute_advantages, select_nonzero_advantages
from .prompts import derive_seed

if TYPE_CHECKING:
    from .algorithms.base import Algorithm
    from .trainer import Trainer

__all__ = ["collect_rollouts", "drop_zero_advantages", "rollout_stats", "sde_window"]


def sde_window(config, epoch: int) -> tuple[int, int] | None:
    """This epoch's SDE window ``(start, end)`` (``sampling.sde_window``), the same on every process;
    ``None`` when every step is stochastic."""
    s = config.sampling
    if not s.sde_window:
        return None
    lo, hi = s.window_range()
    start = random.Random(derive_seed(config.run.seed, "sde_window", epoch)).randint(lo, hi - s.sde_window)
    return start, start + s.sde_window


def collect_rollouts(trainer: "Trainer", algorithm: "Algorithm", epoch: int) -> Rollout:
    """The sampling phase of one epoch: rollouts with rewards and this rank's advantages."""
    config = trainer.config
    s = config.sampling
    acc = trainer.accelerator
    rollouts = []
    window = sde_window(config, epoch)
    for _ in trainer._bar(range(s.batches_per_epoch), f"epoch {epoch}: sampling"):
        counter = trainer.prompt_sampler.counter
        prompts = trainer.prompt_sampler.next_batch()
        start = counter * s.batch_size * acc.num_processes + acc.process_index * s.batch_size
        indices = list(range(start, start + s.batch_size))
        latents = None
        if s.same_latent:  # one initial noise per prompt and epoch, whatever process samples it
            latents = trainer.adapter.prepare_latents(
                len(prompts), [torch.Generator("cpu").manual_seed(derive_seed(config.run.seed, "latent", epoch, p))
                               for p in prompts], height=s.height, width=s.width, num_frames=s.num_frames)
        with torch.no_grad(), acc.autocast():
            rollout = algorithm.rollout(prompts, trainer._generators("sample", epoch, indices=indices),
                                        sde_window=window, latents=latents)
        rollout.rewards = trainer.score(rollout.media, prompts)
        rollout.extras["sample_index"] = torch.tensor(indices, device=rollout.latents.device)
        rollout.media = None
        rollouts.append(rollout)
    batch = Rollout.cat(rollouts)
    advantages = compute_advantages(trainer.normalizer, batch.rewards, batch.prompts, acc, config.advantage.clip_max)
    batch.extras["advantages"] = algorithm.prepare_advantages(advantages).to(batch.latents.device)
    return batch


def rollout_stats(trainer: "Trainer", batch: Rollout) -> dict[str, Any]:
    """Per-epoch metrics of an online batch: reward mean and std over all processes, the advantage
    tracker's statistics and the SDE window's start."""
    rewards = batch.rewards.float()
    if trainer.accelerator.num_processes > 1:
        rewards = trainer.accelerator.gather(rewards)
    rewards = rewards.cpu()
    stats: dict[str, Any] = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
                             **trainer.normalizer.stats()}
    if "sde_window" in batch.sampler:
        stats["sde_window_start"] = batch.sampler["sde_window"][0]
    return stats


def drop_zero_advantages(trainer: "Trainer", batch: Rollout, epoch: int) -> tuple[Rollout, int, dict[str, float]]:
    """Flow-GRPO's filter (``advantage.drop_zero``): keep the samples with a non-zero advantage, topped up
    with random others so every process still makes the same number of train batches. Returns the kept
    batch, its train batch size and the kept fraction."""
    train_batch_size = trainer.config.train.batch_size
    num_batches = batch.batch_size // train_batch_size
    keep = select_nonzero_advantages(batch.extras["advantages"], num_batches, torch.Generator().manual_seed(
        derive_seed(trainer.config.run.seed, "drop_zero", epoch, trainer.accelerator.process_index)))
    kept = batch[keep.to(batch.latents.device)]
    return kept, kept.batch_size // num_batches, {"kept_fraction": len(keep) / batch.batch_size}
