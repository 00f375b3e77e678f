"""Rewards -> advantages, computed on the rewards of *all* processes.

Two normalisers (ALGORITHMS.md §C.4):

* :class:`PerPromptTracker` (DDPO): a FIFO buffer of past rewards per prompt string that persists
  across epochs; ``A = (r - mean)/(std + 1e-6)`` over the prompt's buffer, falling back to the
  statistics of the current batch while the buffer holds fewer than ``min_count`` rewards.
* :class:`GroupNormalizer` (Flow-GRPO, AWM): the current group only; ``A = (r - mean_group)/(std + 1e-4)``
  with ``std`` over the whole batch (``global_std=True``) or over the group.
* :class:`BatchNormalizer`: ``(r - mean)/(std + 1e-8)`` over the batch (DDPO without tracking).

:func:`compute_advantages` gathers rewards (``accelerate`` ``gather``) and prompts (``gather_object``)
from every rank, normalises, clips to ``[-clip_max, clip_max]`` and returns this rank's slice.
Standard deviations are population std (``ddof=0``), as in the official trackers. A group whose
rewards are all equal gets advantages of exactly 0 (not rounding noise divided by ``eps``), so
:func:`select_nonzero_advantages` (Flow-GRPO's zero-advantage filter, ``advantage.drop_zero``) can
drop its samples.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "AdvantageNormalizer",
    "BatchNormalizer",
    "GroupNormalizer",
    "PerPromptTracker",
    "build_normalizer",
    "compute_advantages",
    "select_nonzero_advantages",
    "gather_rewards",
]


class AdvantageNormalizer:
    """``normalize(prompts, rewards) -> advantages`` on global (gathered) arrays; checkpointable."""

    def normalize(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PerPromptTracker(AdvantageNormalizer):
    """DDPO's per-prompt reward history (``buffer_size`` most recent rewards per prompt)."""

    eps = 1e-6

    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque[float]] = {}

    def normalize(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        prompts_arr = np.asarray(prompts, dtype=object)
        advantages = np.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):  # first-seen order, deterministic
            mask = prompts_arr == prompt
            values = rewards[mask]
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(values.tolist())
            reference = rewards if len(buffer) < self.min_count else np.asarray(buffer)
            if reference.max() == reference.min():  # exact test: the mean of equal floats can round
                advantages[mask] = 0.0
                continue
            advantages[mask] = (values - reference.mean()) / (reference.std() + self.eps)
        return advantages

    def stats(self) -> dict[str, float]:
        return {"tracked_prompts": float(len(self.buffers))}

    def state_dict(self) -> dict[str, Any]:
        return {"buffers": {p: list(b) for p, b in self.buffers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffers = {p: deque(v, maxlen=self.buffer_size) for p, v in state.get("buffers", {}).items()}


class GroupNormalizer(AdvantageNormalizer):
    """Group-relative advantages of the current batch (no history)."""

    eps = 1e-4

    def __init__(self, global_std: bool = True):
        self.global_std = global_std
        self._zero_std_fraction = 0.0

    def normalize(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        prompts_arr = np.asarray(prompts, dtype=object)
        advantages = np.empty_like(rewards)
        global_std = rewards.std()
        groups = list(dict.fromkeys(prompts))
        zero_std = 0
        for prompt in groups:
            mask = prompts_arr == prompt
            values = rewards[mask]
            if values.max() == values.min():  # exact test: the mean of equal floats can round
                zero_std += 1
                advantages[mask] = 0.0
                continue
            std = global_std if self.global_std else values.std()
            advantages[mask] = (values - values.mean()) / (std + self.eps)
        self._zero_std_fraction = zero_std / max(len(groups), 1)
        return advantages

    def stats(self) -> dict[str, float]:
        return {"zero_std_group_fraction": self._zero_std_fraction}


class BatchNormalizer(AdvantageNormalizer):
    eps = 1e-8

    def normalize(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        return (rewards - rewards.mean()) / (rewards.std() + self.eps)


def build_normalizer(mode: str, buffer_size: int = 16, min_count: int = 16, global_std: bool = True) -> AdvantageNormalizer:
    if mode == "per_prompt":
        return PerPromptTracker(buffer_size, min_count)
    if mode == "group":
        return GroupNormalizer(global_std)
    if mode == "batch":
        return BatchNormalizer()
    raise ValueError(f"unknown advantage mode {mode!r}; use per_prompt, group or batch")


def gather_rewards(accelerator, rewards: torch.Tensor, prompts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """All ranks' rewards and prompts, in rank order (every rank must hold the same count)."""
    if accelerator is None or accelerator.num_processes == 1:
        return rewards.detach().double().cpu().numpy(), list(prompts)
    from accelerate.utils import gather_object

    gathered = accelerator.gather(rewards.detach().to(accelerator.device, torch.float64))
    all_prompts = gather_object(list(prompts))
    return gathered.cpu().numpy(), list(all_prompts)


def compute_advantages(
    normalizer: AdvantageNormalizer,
    rewards: torch.Tensor,
    prompts: Sequence[str],
    accelerator=None,
    clip_max: float = 5.0,
) -> torch.Tensor:
    """Gather, normalise, clip to ``[-clip_max, clip_max]``; return this rank's slice (float32, ``[n]``)."""
    if len(prompts) != rewards.shape[0]:
        raise ValueError(f"{rewards.shape[0]} rewards for {len(prompts)} prompts")
    all_rewards, all_prompts = gather_rewards(accelerator, rewards, prompts)
    advantages = normalizer.normalize(all_prompts, all_rewards)
    advantages = np.clip(advantages, -clip_max, clip_max)
    rank = 0 if accelerator is None else accelerator.process_index
    n = rewards.shape[0]
    local = advantages[rank * n : (rank + 1) * n]
    return torch.as_tensor(local, dtype=torch.float32, device=rewards.device)


def select_nonzero_advantages(advantages: torch.Tensor, num_batches: int, generator: torch.Generator) -> torch.Tensor:
    """Flow-GRPO's zero-advantage filter: the indices (sorted) of the samples to train on.

    Samples whose advantage is exactly 0 (groups with equal rewards) carry no policy gradient but
    still dilute the batch mean and pull through the KL term, so they are dropped; randomly chosen
    dropped ones are put back until the count is a positive multiple of ``num_batches``, so every
    process still makes the same number of train batches (and gradient accumulation is unchanged).
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    zero = advantages.detach().cpu() == 0
    keep = (~zero).nonzero().flatten()
    dropped = zero.nonzero().flatten()
    wanted = max(1, -(-len(keep) // num_batches)) * num_batches  # next multiple, at least one sample per batch
    short = wanted - len(keep)
    if short > len(dropped):  # cannot happen while num_batches divides the sample count
        raise ValueError(f"cannot split {len(advantages)} samples into {num_batches} equal batches")
    refill = dropped[torch.randperm(len(dropped), generator=generator)[:short]]
    return torch.sort(torch.cat([keep, refill])).values
