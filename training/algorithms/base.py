r"""What an algorithm supplies to the one training loop, and the loss pieces they share.

The loop (:class:`diffalign.training.trainer.Trainer`) owns devices, gradient accumulation, optimizer
steps, EMA, checkpoints, evaluation and logging. An :class:`Algorithm` owns what is its own:

* **data** — :meth:`collect` gives the epoch's batch (default: online rollouts with rewards and
  advantages, :mod:`diffalign.training.online`; preference algorithms read a dataset) and
  :meth:`samples_per_epoch` says how many examples it holds per process. A batch is anything that can be
  indexed, concatenated and moved (:class:`~diffalign.rollout.Rollout`,
  :class:`~diffalign.preferences.PreferenceBatch`);
* **what is trained** — :meth:`setup_trainable` (default: the denoiser's LoRA or all its weights) and
  :meth:`parameter_groups` (named groups of parameters, each with an optional learning rate; a frozen
  model with another trainable is possible);
* **how it is sampled for evaluation** — :meth:`evaluation_rollout`, so a trainable that is not the
  denoiser (a noise distribution) shows in the held-out score;
* **the loss** — :meth:`micro_batches` / :meth:`loss`, with :meth:`micro_steps_per_batch` /
  :meth:`updates_per_pass` from which the loop derives gradient accumulation;
* optional hooks :meth:`setup`, :meth:`after_update`, :meth:`after_epoch` and a checkpointable
  :meth:`state_dict`.

Algorithms talk to the model only through the adapter primitives (``sample``, ``step_log_prob``,
``predict``, ``add_noise``, ``training_target``, ``reference``, named ``snapshot``\ s, ``add_lora``), so
none knows the model family. :func:`denoising_errors` is the one place where the denoising error of policy
and reference is computed (every preference loss, AWM).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import torch

from diffalign.config import Config, ConfigError
from diffalign.registry import Registry
from diffalign.rollout import Rollout

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = [
    "ALGORITHMS", "Algorithm", "DenoisingErrors", "ParamGroup", "clipped_policy_loss", "denoising_errors",
    "mean_over_sample", "register_algorithm",
]

#: algorithm name -> Algorithm subclass (other packages add theirs via entry points)
ALGORITHMS: Registry[type["Algorithm"]] = Registry("algorithm", entry_point_group="diffalign.algorithms")


def register_algorithm(cls: type["Algorithm"]) -> type["Algorithm"]:
    ALGORITHMS.register(cls.name, cls, overwrite=True)
    return cls


def mean_over_sample(x: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch dim -> ``[B]``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def clipped_policy_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (DDPO_IS, Flow-GRPO):

    ``r = exp(logp_θ - logp_old)``, ``L = mean max(-A·r, -A·clip(r, 1-ε, 1+ε))``.
    Also returns ``approx_kl = ½·mean((logp - logp_old)²)``, ``clipfrac`` and the mean ratio.
    """
    diff = log_prob - old_log_prob.detach()
    ratio = torch.exp(diff)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "approx_kl": 0.5 * (diff.detach() ** 2).mean(),
            "clipfrac": ((ratio.detach() - 1.0).abs() > clip_range).float().mean(),
            "ratio": ratio.detach().mean(),
        }
    return loss, stats


@dataclass
class DenoisingErrors:
    """Per-sample denoising errors ``e = mean_d (f(x_t, t, c) - target)²`` in float64 (``[B]``), in the
    model's own prediction space (ε, v or flow velocity), for the policy and optionally a reference."""

    policy: torch.Tensor
    reference: torch.Tensor | None
    #: the policy's prediction (with gradient), for extra terms such as a KL on predictions
    prediction: torch.Tensor
    target: torch.Tensor


def denoising_errors(
    adapter,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    conditioning: dict[str, Any],
    *,
    x_t: torch.Tensor | None = None,
    reference: str | None = "base",
    target: torch.Tensor | None = None,
) -> DenoisingErrors:
    """Policy and reference denoising errors on the same ``x_t``, ``t`` and noise.

    ``x_t = add_noise(x0, noise, t)`` unless given (SmPO's inverted ``x_t``, whose noise is then
    :meth:`implied_noise`); target ``training_target(x0, noise, t)`` unless given (Diffusion-DRO's policy branch
    regresses onto the sampler's own prediction). ``reference``: ``"base"`` (the frozen
    model, :meth:`reference`), a snapshot name (:meth:`snapshot`), or ``None`` (policy only). No CFG:
    conditioning's ``uncond`` is ignored.
    """
    if x_t is None:
        x_t = adapter.add_noise(x0, noise, t)
    if target is None:
        target = adapter.training_target(x0, noise, t)
    cond = {"cond": conditioning["cond"], "uncond": None}
    prediction = adapter.predict(x_t, t, cond, guidance_scale=1.0)
    policy = mean_over_sample((prediction.double() - target.double()) ** 2)
    ref = None
    if reference is not None:
        context = adapter.reference() if reference == "base" else adapter.snapshot(reference)
        with context:
            ref_prediction = adapter.predict(x_t, t, cond, guidance_scale=1.0)
        ref = mean_over_sample((ref_prediction.double() - target.double()) ** 2)
    return DenoisingErrors(policy=policy, reference=ref, prediction=prediction, target=target)


@dataclass
class ParamGroup:
    """Trainable parameters under one name, with an optional learning rate (default ``train.learning_rate``).
    ``module`` is put in train mode for the training phase. Parameter names are saved as given for the
    ``denoiser`` group and as ``group/name`` for the others."""

    name: str
    params: dict[str, torch.nn.Parameter]
    learning_rate: float | None = None
    module: torch.nn.Module | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Algorithm:
    """Base class; subclasses set ``name`` and ``config_class`` and register with :func:`register_algorithm`."""

    name: ClassVar[str] = "base"
    #: the dataclass of this algorithm's ``[name]`` config section
    config_class: ClassVar[type]
    #: rollouts must carry per-step log-probs (stochastic sampling)
    needs_log_probs: ClassVar[bool] = True
    #: advantage mode the official recipe uses (a warning is logged when the config differs; None: no advantages)
    default_advantage_mode: ClassVar[str | None] = "group"
    #: why ``advantage.drop_zero`` is refused (empty: the filter is allowed)
    drop_zero_refused: ClassVar[str] = ""
    #: what a training rollout keeps of its trajectory: ``"all"`` (every step's latents, to re-score
    #: transitions) or ``"final"`` (the clean result only; a video trajectory of every step is large)
    rollout_latents: ClassVar[str] = "all"

    def __init__(self, config: Config):
        self.config = config
        self.cfg = config.section(self.name)
        self.trainer: "Trainer | None" = None
        self.validate()

    # ----------------------------------------------------------------------- config
    def validate(self) -> None:
        """Cross-section checks; raise :class:`ConfigError` naming the key."""
        if self.config.advantage.drop_zero and self.drop_zero_refused:
            raise ConfigError(f"advantage.drop_zero = true is not supported by {self.name}: {self.drop_zero_refused}")
        if self.needs_log_probs and not self.config.sampling.stochastic:
            raise ConfigError(
                f"sampling.stochastic = false, but {self.name} needs per-step log-probs: set sampling.stochastic = true"
            )

    def check_reward(self, reward: Any) -> None:
        """Refuse a reward this algorithm cannot use (a scorer spec or a callable), before any model loads."""

    def num_train_timesteps(self) -> int:
        """Per-step policy gradients: how many of a sample's steps are trained without an SDE window."""
        raise NotImplementedError

    def micro_steps_per_batch(self) -> int:
        """Backward passes per train batch: by default one per trained step, i.e. the SDE window's steps
        (``sampling.sde_window``) or ``num_train_timesteps()`` without a window."""
        return self.config.sampling.sde_window or self.num_train_timesteps()

    def updates_per_pass(self) -> int:
        """Optimizer steps per pass over the epoch's samples."""
        return self.config.train.updates_per_epoch

    def samples_per_epoch(self) -> int:
        """Examples per process in one epoch's batch (online: ``sampling.batch_size x batches_per_epoch``)."""
        s = self.config.sampling
        return s.batch_size * s.batches_per_epoch

    def samples_per_epoch_source(self) -> str:
        """Where :meth:`samples_per_epoch` comes from, for error messages."""
        s = self.config.sampling
        return f"sampling.batch_size {s.batch_size} x sampling.batches_per_epoch {s.batches_per_epoch}"

    # ---------------------------------------------------------------------- hooks
    def setup_trainable(self, adapter) -> None:
        """Make the trainable parameters trainable: a LoRA adapter on the denoiser (``model.lora``) or every
        denoiser weight (the frozen base is snapshotted first, so :meth:`reference` is the model before
        training)."""
        m = self.config.model
        if m.lora:
            if adapter.lora_config is None:
                adapter.add_lora(rank=m.lora_rank, alpha=m.lora_alpha, target_modules=m.lora_targets or None,
                                 init=m.lora_init)
        else:
            adapter.freeze_reference()
            adapter.trainable_denoiser.requires_grad_(True)

    def setup(self, trainer: "Trainer") -> None:
        """Called once the trainable parameters exist and before the optimizer is built."""
        self.trainer = trainer

    def parameter_groups(self) -> list[ParamGroup]:
        """What the optimizer trains (default: the denoiser's trainable parameters)."""
        adapter = self.adapter
        return [ParamGroup("denoiser", adapter.trainable_named_parameters(), module=adapter.trainable_denoiser)]

    @property
    def adapter(self):
        return self.trainer.adapter

    def collect(self, epoch: int) -> Any:
        """The epoch's batch for this process (default: online rollouts, rewards and advantages)."""
        from ..online import collect_rollouts

        return collect_rollouts(self.trainer, self, epoch)

    def epoch_stats(self, batch: Any) -> dict[str, Any]:
        """Metrics of the collected batch, logged with the epoch (default: the online reward statistics)."""
        from ..online import rollout_stats

        return rollout_stats(self.trainer, batch)

    def select_for_training(self, batch: Any, epoch: int) -> tuple[Any, int, dict[str, float]]:
        """The part of the batch that is trained on and its train batch size (default: all of it, or the
        non-zero advantages under ``advantage.drop_zero``)."""
        if self.config.advantage.drop_zero:
            from ..online import drop_zero_advantages

            return drop_zero_advantages(self.trainer, batch, epoch)
        return batch, self.config.train.batch_size, {}

    def evaluation_rollout(self, prompts: list[str], generator) -> Rollout:
        """Held-out samples with the ``[eval]`` sampler settings (no gradients, decoded media; only the final
        latents are kept)."""
        e, s = self.config.eval, self.config.sampling
        return self.adapter.sample(
            prompts, steps=e.steps, guidance_scale=e.guidance_scale, generator=generator,
            negative_prompts=s.negative_prompt or None, stochastic=e.stochastic, eta=s.eta,
            noise_level=s.noise_level, log_probs=False, height=s.height, width=s.width,
            num_frames=e.num_frames or s.num_frames, keep_latents="final",
        )

    def rollout(self, prompts: list[str], generator, *, sde_window: tuple[int, int] | None = None,
                latents: torch.Tensor | None = None, decode: bool = True) -> Rollout:
        """Sample one batch with the ``[sampling]`` settings (no gradients), keeping the latents the algorithm
        declares (``rollout_latents``); ``sde_window`` and ``latents`` are chosen by the loop
        (``sampling.sde_window``, ``sampling.same_latent``)."""
        s = self.config.sampling
        return self.adapter.sample(
            prompts,
            steps=s.steps,
            guidance_scale=s.guidance_scale,
            generator=generator,
            negative_prompts=s.negative_prompt or None,
            stochastic=s.stochastic,
            eta=s.eta,
            noise_level=s.noise_level,
            log_probs=self.needs_log_probs,
            height=s.height,
            width=s.width,
            num_frames=s.num_frames,
            sde_window=sde_window,
            latents=latents,
            keep_latents=self.rollout_latents,
            decode=decode,
        )

    def window_steps(self, batch: Rollout) -> list[int] | None:
        """The step indices of the batch's SDE window (``None``: every step is stochastic)."""
        window = batch.sampler.get("sde_window")
        return None if window is None else list(range(window[0], window[1]))

    def prepare_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """Clipped advantages ``[n]`` -> what the loss uses (identity by default)."""
        return advantages

    def micro_batches(self, batch: Rollout, epoch: int, inner_epoch: int) -> Iterable[Any]:
        """Split a train batch into units, one backward pass each (``micro_steps_per_batch`` of them)."""
        raise NotImplementedError

    def loss(self, micro: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        raise NotImplementedError

    def after_update(self, global_step: int) -> None:
        pass

    def after_epoch(self, epoch: int, global_step: int) -> None:
        pass

    def after_evaluation(self, result: dict[str, Any]) -> None:
        """Called with :meth:`Trainer.evaluate`'s result (per-prompt rewards included) on every process."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # --------------------------------------------------------------------- helpers
    def steps_from_fraction(self, minimum: int = 1, pool: int | None = None) -> int:
        """``int(pool x [name].timestep_fraction)``, the trained (or last trained) step count, where ``pool``
        (default ``sampling.steps``) is the number of steps to choose from; raises :class:`ConfigError`
        naming the keys when the fraction is outside (0, 1] or the count < ``minimum``."""
        fraction = self.cfg.timestep_fraction
        if not 0 < fraction <= 1:
            raise ConfigError(f"{self.name}.timestep_fraction must be in (0, 1], got {fraction}")
        pool = self.config.sampling.steps if pool is None else pool
        count = int(pool * fraction)
        if count < minimum:
            raise ConfigError(
                f"int({pool} steps x {self.name}.timestep_fraction) = {count}, must be >= {minimum}: "
                f"raise sampling.steps or {self.name}.timestep_fraction"
            )
        return count

    def generator(self, *tags: Any) -> torch.Generator:
        """A CPU generator seeded from the run seed and ``tags`` (identical on every rank for equal tags)."""
        from ..prompts import derive_seed

        return torch.Generator("cpu").manual_seed(derive_seed(self.config.run.seed, self.name, *tags))
