"""Diffusion-DRO (Wu et al., 2025, arXiv 2503.18130): denoising ranking against an expert set.

Inverse RL with a max-margin ranking: expert images (the data's experts kind, e.g. ``diffalign prefs topk``)
must be denoised better, relative to the frozen reference, than the model's own samples. The own samples come
from a **lagged sampler** (the snapshot ``dro/sampler``, refreshed from the trainable weights every
``buffer_update_steps`` optimizer updates) through a **replay buffer** (:class:`ReplayBuffer`): each epoch the
sampler generates one trajectory per expert prompt at guidance 1 and the buffer stores, per step, the timestep,
conditioning, ``x_t^π`` and the sampler's own prediction ``f^π = f_θ̄(x_t^π, t, c)``. With
``perturb_timesteps`` every trajectory has its own timesteps, drawn uniformly within each stride of the shared
schedule (the official sample-wise schedule).

A training example is a buffer entry (a trajectory and its expert) and a step ``t`` of it; the expert is noised
at the same ``t`` with fresh ``ε`` (``x_t^E = add_noise(x0^E, ε, t)``, target ``y^E = training_target``). With
``e(x, y) = mean_d (f(x, t, c) - y)²`` for the policy ``f_φ`` and the reference ``f_ref``:

``diff = [e_φ(x_t^E, y^E) - e_ref(x_t^E, y^E)] - [e_φ(x_t^π, f^π) - e_ref(x_t^π, f^π)]``,
``L = mean max(diff + m, 0)``, margin ``m`` (official 0.001):

no loss and no gradient once the expert beats the own sample by the margin. Prompt dropout is the loader's
(``data.prompt_dropout``, official 0.2). Logged: ``hinge_active`` (fraction with ``diff + m > 0``) and the
two gaps.

With the official sync (the sampler refreshed after every optimizer update, the buffer holding only the
newest trajectories, one update per collected batch) the sampler *is* the policy, so ``e_φ(x_t^π, f^π) = 0``
with zero gradient: the update is ``∇ mean_i 1[diff_i + m > 0]·e_φ(x_t^E)``, fitting the experts, gated by
``e_φ^E - e_ref^E + e_ref^π + m > 0`` (``e_ref^π`` measures how far the policy has moved from the reference
on its own samples). A lagged sampler (``buffer_update_steps > 1``, or older generations in the buffer)
gives the own branch a gradient that pushes ``f_φ`` further along ``f_φ - f_θ̄``.

Deliberate differences from the official ``train.py``: the buffer is refilled once per collected batch (one
trajectory per expert of the batch) instead of every micro-step, and it is saved whole in checkpoints (the
official ``save()`` keeps only its last key). The sampler is the family's deterministic one (DDIM / Euler),
not DPM-Solver++.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffalign.config import ConfigError, register_section

from .base import denoising_errors, register_algorithm
from .preference import PreferenceAlgorithm

__all__ = ["DRO", "DROConfig", "ReplayBuffer", "dro_hinge_loss"]

SAMPLER = "dro/sampler"


@register_section("dro")
@dataclass
class DROConfig:
    #: official: 0.001
    margin: float = 0.001
    #: trajectories kept per process (a multiple of data.examples_per_epoch; official: 4, the latest batch)
    buffer_size: int = 4
    #: optimizer updates between refreshes of the lagged sampler (official: every update; its 16 counts
    #: micro-steps at gradient accumulation 16)
    buffer_update_steps: int = 1
    #: sampler steps of the buffer's trajectories (official: 20, DPM-Solver++)
    sample_steps: int = 20
    #: per-trajectory timesteps drawn within each stride (official; DDIM families only)
    perturb_timesteps: bool = True


def dro_hinge_loss(policy_expert, ref_expert, policy_own, ref_own, margin: float):
    """Per example ``max((e_φ^E - e_ref^E) - (e_φ^π - e_ref^π) + m, 0)``; returns (loss, diff)."""
    diff = (policy_expert - ref_expert) - (policy_own - ref_own)
    return torch.relu(diff + margin), diff


class ReplayBuffer:
    """The lagged sampler's trajectories on CPU, one generation (collected batch) at a time, newest last.

    A generation holds, per slot (expert): ``prompts``, the expert's clean latents ``expert`` (``E×L``), its
    conditioning ``cond``, the trajectory ``x_t`` (``E×S×L``), the sampler's predictions ``prediction``
    (``E×S×L``) and ``timesteps`` (``E×S``). At most ``capacity`` generations are kept (oldest dropped).
    """

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ConfigError(f"the replay buffer must hold at least one generation, got {capacity}")
        self.capacity = capacity
        self.generations: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.generations)

    def push(self, generation: dict[str, Any]) -> None:
        self.generations.append(generation)
        del self.generations[: max(0, len(self.generations) - self.capacity)]

    def entry(self, age: int, slot: int, step: int) -> dict[str, Any]:
        """Slot ``slot``'s step ``step`` in the generation ``age`` pushes ago (0: the newest)."""
        g = self.generations[-1 - age]
        return {
            "prompt": g["prompts"][slot], "expert": g["expert"][slot], "x_t": g["x_t"][slot, step],
            "prediction": g["prediction"][slot, step], "timestep": g["timesteps"][slot, step],
            "cond": {k: v[slot] for k, v in g["cond"].items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "generations": [dict(g) for g in self.generations]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.generations = [dict(g) for g in state["generations"]]


@register_algorithm
class DRO(PreferenceAlgorithm):
    name = "dro"
    config_class = DROConfig
    data_kind = "experts"

    def validate(self) -> None:
        super().validate()
        c, per_epoch = self.cfg, self.data_config.examples_per_epoch
        if not c.margin >= 0:
            raise ConfigError(f"dro.margin must be >= 0, got {c.margin}")
        if c.buffer_update_steps <= 0 or c.sample_steps <= 0:
            raise ConfigError("dro.buffer_update_steps and dro.sample_steps must be positive")
        if c.buffer_size <= 0 or c.buffer_size % per_epoch:
            raise ConfigError(f"dro.buffer_size = {c.buffer_size} must be a positive multiple of "
                              f"data.examples_per_epoch = {per_epoch} (the buffer keeps whole collected batches)")

    def setup(self, trainer) -> None:
        super().setup(trainer)
        if self.cfg.perturb_timesteps and not self.adapter.per_sample_timesteps:
            raise ConfigError(f"dro.perturb_timesteps = true needs a DDIM family; {type(self.adapter).__name__} "
                              "has a flow schedule: set dro.perturb_timesteps = false")
        self.buffer = ReplayBuffer(self.cfg.buffer_size // self.data_config.examples_per_epoch)
        if SAMPLER not in self.adapter.snapshot_names:
            self.adapter.save_snapshot(SAMPLER)

    def after_update(self, global_step: int) -> None:
        if global_step % self.cfg.buffer_update_steps == 0:
            self.adapter.save_snapshot(SAMPLER)

    # ------------------------------------------------------------------------------- data
    def sample_trajectories(self, prompts: list[str], conditioning: dict[str, Any], positions: list[int]) -> dict[str, Any]:
        """The lagged sampler's trajectories at guidance 1, one per prompt (each seeded by its draw position)."""
        adapter, c, s = self.adapter, self.cfg, self.config.sampling
        gens = [self.generator("trajectory", p) for p in positions]
        latents = torch.cat([adapter.prepare_latents(1, g, height=s.height, width=s.width, num_frames=s.num_frames)
                             for g in gens])
        timesteps = adapter.stride_perturbed_timesteps(c.sample_steps, gens) if c.perturb_timesteps else None
        with adapter.snapshot(SAMPLER):
            rollout = adapter.sample(prompts, steps=c.sample_steps, guidance_scale=1.0, latents=latents,
                                     conditioning={"cond": conditioning["cond"], "uncond": None}, decode=False,
                                     return_predictions=True, timesteps=timesteps)
        if timesteps is None:
            timesteps = rollout.timesteps[None].expand(len(prompts), -1)
        return {"x_t": rollout.latents[:, :-1].float().cpu(), "prediction": rollout.extras["predictions"].float().cpu(),
                "timesteps": timesteps.float().cpu()}

    def collect(self, epoch: int):
        experts = super().collect(epoch)
        positions = [int(p) for p in experts.extras["sample_index"].tolist()]
        trajectories = self.sample_trajectories(experts.prompts, experts.conditioning, positions)
        self.buffer.push({"prompts": list(experts.prompts), "expert": experts.latents.float().cpu(),
                          "cond": {k: v.cpu() for k, v in experts.conditioning["cond"].items()}, **trajectories})
        # example i replays slot i of a generation drawn uniformly from the buffer, at a uniform step of it:
        # slot i holds the same global draw on any number of processes
        entries = []
        for slot, position in enumerate(positions):
            g = self.generator("replay", epoch, position)
            age = int(torch.randint(len(self.buffer), (1,), generator=g))
            step = int(torch.randint(self.cfg.sample_steps, (1,), generator=g))
            entries.append(self.buffer.entry(age, slot, step))
        device = experts.latents.device
        experts.prompts = [e["prompt"] for e in entries]
        experts.latents = torch.stack([e["expert"] for e in entries]).to(device)
        experts.conditioning = {"cond": {k: torch.stack([e["cond"][k] for e in entries]).to(device)
                                         for k in entries[0]["cond"]}, "uncond": None}
        experts.extras["own_x_t"] = torch.stack([e["x_t"] for e in entries]).to(device)
        experts.extras["own_prediction"] = torch.stack([e["prediction"] for e in entries]).to(device)
        experts.extras["timestep"] = torch.stack([e["timestep"] for e in entries]).to(device)
        return experts

    def epoch_stats(self, batch) -> dict[str, Any]:
        return {**super().epoch_stats(batch), "buffer_generations": len(self.buffer)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("buffer") is not None:
            self.buffer.load_state_dict(state["buffer"])

    # ------------------------------------------------------------------------------- loss
    def micro_batches(self, batch, epoch: int, inner_epoch: int):
        """The expert's noise from the example's own generator; its timestep is the replayed step's."""
        gens = [self.generator("train", epoch, inner_epoch, int(i)) for i in batch.extras["sample_index"].tolist()]
        noise = torch.stack([torch.randn(tuple(batch.latents.shape[1:]), generator=g) for g in gens])
        yield batch, batch.extras["timestep"], noise.to(batch.latents.device)

    def loss(self, micro):
        batch, t, noise = micro
        adapter = self.adapter
        x0 = batch.latents.float()
        noise = noise.to(x0)
        timestep = t if adapter.prediction_type == "flow" else t.long()
        x_t = torch.cat([adapter.add_noise(x0, noise, timestep), batch.extras["own_x_t"].to(x0)])
        target = torch.cat([adapter.training_target(x0, noise, timestep), batch.extras["own_prediction"].to(x0)])
        cond = self.paired_conditioning(batch)
        errors = denoising_errors(adapter, x_t, x_t, torch.cat([timestep, timestep]), cond, x_t=x_t, target=target,
                                  reference="base")
        b = x0.shape[0]
        policy, ref = errors.policy, errors.reference
        losses, diff = dro_hinge_loss(policy[:b], ref[:b], policy[b:], ref[b:], self.cfg.margin)
        stats = {
            "hinge_active": (diff.detach() + self.cfg.margin > 0).double().mean().float(),
            "expert_gap": (policy[:b].detach() - ref[:b]).mean().float(),
            "own_gap": (policy[b:].detach() - ref[b:]).mean().float(),
        }
        return losses.mean().float(), stats
