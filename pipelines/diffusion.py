"""The variance-preserving (VP) process: DDIM sampling, forward noising, targets and DDIM inversion.

Notation (ALGORITHMS.md §1, §C.1, §C.2): ``x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε`` with the scheduler's
``alphas_cumprod`` ``ᾱ``; the denoiser predicts ``ε`` (SD 1.x), ``v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0``
(SD 2.x, CogVideoX) or ``x0``. A sampler transition ``t -> t_prev`` uses diffusers' DDIM rule
``t_prev = t - T_train // S`` and ``ᾱ_prev = final_alpha_cumprod`` past the end, so deterministic
sampling (η=0) reproduces ``DDIMScheduler.step`` (and ``CogVideoXDDIMScheduler.step``).
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from diffalign.rollout import Rollout

from .base import AdapterError, Conditioning, Generator, _expand_timestep
from .samplers import StepOutput, ddim_step, ddim_x0_and_eps

logger = logging.getLogger(__name__)


class DiffusionProcess:
    """Mixin for VP families; put it before :class:`~.base.PipelineAdapter` in the bases.

    The adapter samples with DDIM. A pipeline that ships another scheduler (e.g. SDXL's Euler) gets a
    ``ddim_scheduler_class`` built from the same config, as DDPO does.
    """

    #: scheduler class name the sampler math reproduces (diffusers.<name>)
    ddim_scheduler_class: ClassVar[str] = "DDIMScheduler"
    per_sample_timesteps: ClassVar[bool] = True

    def __init__(self, pipe, device: torch.device | str | None = None):
        super().__init__(pipe, device=device)
        scheduler = pipe.scheduler
        if type(scheduler).__name__ != self.ddim_scheduler_class:
            import diffusers

            ddim_cls = getattr(diffusers, self.ddim_scheduler_class)
            logger.info("replacing %s with %s (same config) for DDIM sampling", type(scheduler).__name__, ddim_cls.__name__)
            pipe.scheduler = ddim_cls.from_config(scheduler.config)
        if self.scheduler.config.get("thresholding", False):
            raise AdapterError("scheduler.config.thresholding=True (dynamic thresholding) is not supported for latent models")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise AdapterError(f"unsupported scheduler prediction_type {self.prediction_type!r}")

    # ----------------------------------------------------------------- schedule
    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def _alphas_at(self, t: torch.Tensor | int, like: torch.Tensor | None = None) -> torch.Tensor:
        """``ᾱ_t`` (float32, on the device of ``like`` or the adapter)."""
        device = like.device if like is not None else self.device
        t = torch.as_tensor(t, device="cpu").long()
        if (t < 0).any() or (t >= self.num_train_timesteps).any():
            raise AdapterError(f"timesteps must lie in [0, {self.num_train_timesteps}), got {t.tolist()}")
        return self.scheduler.alphas_cumprod.float().cpu()[t].to(device)

    def _alpha_pair(self, t: torch.Tensor | int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ᾱ_t, ᾱ_prev)`` for the DDIM transition out of ``t`` on an ``steps``-step schedule."""
        alphas = self.scheduler.alphas_cumprod.float().cpu()
        t = torch.as_tensor(t, device="cpu").long()
        prev = t - self.num_train_timesteps // steps
        final = torch.as_tensor(self.scheduler.final_alpha_cumprod, dtype=torch.float32).cpu()
        a_prev = torch.where(prev >= 0, alphas[prev.clamp(min=0)], final)
        return alphas[t].to(self.device), a_prev.to(self.device)

    def _per_sample_alpha_pair(self, timesteps: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ᾱ_t, ᾱ_next)`` ``[B]`` for column ``index`` of a ``B×S`` per-sample schedule (the last column
        steps to the final ᾱ)."""
        alphas = self.scheduler.alphas_cumprod.float().cpu()
        t = timesteps[:, index].long().cpu()
        a_t = self._alphas_at(t)
        if index + 1 < timesteps.shape[1]:
            a_prev = alphas[timesteps[:, index + 1].long().cpu()]
        else:
            final = torch.as_tensor(self.scheduler.final_alpha_cumprod, dtype=torch.float32).cpu()
            a_prev = final.expand(t.shape[0])
        return a_t, a_prev.to(self.device)

    def stride_perturbed_timesteps(self, steps: int, generators: list[torch.Generator]) -> torch.Tensor:
        """Diffusion-DRO's sample-wise schedule: each sample's timestep ``i`` drawn uniformly from the
        ``T/steps`` training timesteps ending at the shared schedule's ``t_i``, i.e. ``t_i - u``,
        ``u ~ U{0, ..., T/steps - 1}`` (one generator per sample); rows stay strictly decreasing. ``B×S``."""
        base = self._schedule(self._check_steps(steps))["timesteps"].cpu().long()
        stride = self.num_train_timesteps // steps
        offsets = torch.stack([torch.randint(0, stride, (steps,), generator=g) for g in generators])
        return (base[None] - offsets).clamp(min=0).to(self.device)

    def _schedule(self, steps: int, latents: torch.Tensor | None = None, **options) -> dict[str, torch.Tensor]:
        if options:
            raise AdapterError(f"unknown sampling options for a DDIM sampler: {sorted(options)}")
        self.scheduler.set_timesteps(steps, device=self.device)
        return {"timesteps": self.scheduler.timesteps.clone()}

    def _step(
        self, model_output: torch.Tensor, index: int | torch.Tensor, sample: torch.Tensor, schedule: dict[str, torch.Tensor],
        sampler: dict[str, Any], generator: Generator = None, prev_sample: torch.Tensor | None = None,
    ) -> StepOutput:
        timesteps = schedule["timesteps"]
        if "sample_timesteps" in schedule:  # a schedule per sample: from column index to column index + 1
            a_t, a_prev = self._per_sample_alpha_pair(schedule["sample_timesteps"], int(index))
        else:
            a_t, a_prev = self._alpha_pair(timesteps[index], int(sampler.get("steps") or len(timesteps)))
        config = self.scheduler.config
        return ddim_step(
            model_output, sample, a_t, a_prev,
            prediction_type=self.prediction_type,
            eta=float(sampler.get("eta", 0.0)),
            generator=generator,
            prev_sample=prev_sample,
            clip_sample_range=config.clip_sample_range if config.get("clip_sample", False) else None,
            reduce=sampler.get("reduce", "mean"),
        )

    # ------------------------------------------------------------ forward process
    def _per_sample_alphas(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        t = _expand_timestep(t, like.shape[0], torch.device("cpu"))
        alphas = self.scheduler.alphas_cumprod.cpu().to(like.dtype)[t.long().cpu()].to(like.device)
        return alphas.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε``."""
        if x0.shape != noise.shape:
            raise AdapterError(f"x0 shape {tuple(x0.shape)} does not match noise shape {tuple(noise.shape)}")
        alphas = self._per_sample_alphas(t, x0)
        return alphas**0.5 * x0 + (1 - alphas) ** 0.5 * noise

    def implied_noise(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``ε̃ = (x_t - sqrt(ᾱ_t) x0) / sqrt(1-ᾱ_t)`` (SmPO's target for an inverted ``x_t``)."""
        alphas = self._per_sample_alphas(t, x0)
        return (x_t - alphas**0.5 * x0) / (1 - alphas) ** 0.5

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``ε`` (epsilon), ``v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0`` (v_prediction) or ``x0`` (sample)."""
        if x0.shape != noise.shape:
            raise AdapterError(f"x0 shape {tuple(x0.shape)} does not match noise shape {tuple(noise.shape)}")
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        alphas = self._per_sample_alphas(t, x0)
        return alphas**0.5 * noise - (1 - alphas) ** 0.5 * x0

    def predicted_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``x̂0 = (x_t - sqrt(1-ᾱ_t) ε̂)/sqrt(ᾱ_t)`` (ε), ``sqrt(ᾱ_t) x_t - sqrt(1-ᾱ_t) v̂`` (v) or the output itself
        (sample): the scheduler's ``pred_original_sample``."""
        precision = torch.promote_types(x_t.dtype, torch.float32)
        x = x_t.to(precision)
        return ddim_x0_and_eps(model_output.to(precision), x, self._per_sample_alphas(t, x), self.prediction_type)[0].to(x_t.dtype)

    def sample_training_timesteps(self, batch_size: int, generator: Generator = None) -> torch.Tensor:
        """Uniform integer timesteps in ``[0, T_train)`` (DDPM training, Diffusion-DPO)."""
        if batch_size <= 0:
            raise AdapterError(f"batch_size must be positive, got {batch_size}")
        if isinstance(generator, list):
            if len(generator) != batch_size:
                raise AdapterError(f"{len(generator)} generators for a batch of {batch_size}")
            draws = [torch.randint(0, self.num_train_timesteps, (1,), generator=g, device=g.device) for g in generator]
            return torch.cat([d.to(self.device) for d in draws])
        device = generator.device if generator is not None else self.device
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=device).to(self.device)

    # ----------------------------------------------------------------- inversion
    def _predicted_eps(
        self, x: torch.Tensor, t: torch.Tensor, a_t: torch.Tensor, conditioning: Conditioning, guidance_scale: float
    ) -> torch.Tensor:
        out = self.predict(x, t, conditioning, guidance_scale)
        return ddim_x0_and_eps(out.float(), x.float(), a_t.float(), self.prediction_type)[1]

    @staticmethod
    def _inverse_ddim_step(x_prev: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
        """Solve the deterministic DDIM step ``x_t -> x_prev`` for ``x_t`` given ``ε̂``:
        ``x_t = sqrt(ᾱ_t) (x_prev - sqrt(1-ᾱ_prev) ε̂)/sqrt(ᾱ_prev) + sqrt(1-ᾱ_t) ε̂``."""
        x0 = (x_prev.float() - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
        return a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps

    def invert(
        self, x0: torch.Tensor, conditioning: Conditioning, steps: int = 50, guidance_scale: float = 1.0,
        renoise_iterations: int = 0, until_step: int | None = None,
    ) -> Rollout:
        """DDIM inversion of clean latents ``x0`` along the ``steps``-step sampling schedule.

        Each sampling transition ``x_t -> x_prev`` is inverted with ``ε̂ = ε_θ(x_prev, t)`` (the model
        at the inverted point is unknown, so the current point stands in for it). ReNoise
        (Garibi et al. 2024) refines ``x_t`` ``renoise_iterations`` times: predict at the current estimate
        of ``x_t``, average it with the prediction at ``x_prev`` and redo the inverse step from ``x_prev``.
        ``until_step=k`` stops at sampling index ``k`` (the rollout then starts at ``timesteps[k]``, e.g. the
        ``x_t`` of an inversion-based DPO loss). ``prompts`` of the returned rollout are empty strings.
        """
        steps = self._check_steps(steps)
        if not isinstance(renoise_iterations, int) or renoise_iterations < 0:
            raise AdapterError(f"renoise_iterations must be a non-negative integer, got {renoise_iterations!r}")
        stop = 0 if until_step is None else until_step
        if not 0 <= stop < steps:
            raise AdapterError(f"until_step must be in [0, {steps}), got {until_step}")
        batch = x0.shape[0]
        first = next(v for v in conditioning["cond"].values() if isinstance(v, torch.Tensor))
        if first.shape[0] != batch:
            raise AdapterError(f"conditioning batch {first.shape[0]} does not match x0 batch {batch}")
        timesteps = self._schedule(steps)["timesteps"]
        x = x0
        states = [x0]
        with torch.no_grad():
            for index in reversed(range(stop, steps)):
                t = timesteps[index]
                a_t, a_prev = self._alpha_pair(t, steps)
                eps_here = self._predicted_eps(x, t, a_t, conditioning, guidance_scale)
                x_next = self._inverse_ddim_step(x, eps_here, a_t, a_prev)
                for _ in range(renoise_iterations):
                    eps_there = self._predicted_eps(x_next.to(x0.dtype), t, a_t, conditioning, guidance_scale)
                    x_next = self._inverse_ddim_step(x, 0.5 * (eps_here + eps_there), a_t, a_prev)
                x = x_next.to(x0.dtype)
                states.append(x)
        return Rollout(
            prompts=[""] * batch,
            latents=torch.stack(states[::-1], dim=1),
            timesteps=timesteps[stop:],
            conditioning=conditioning,
            sampler={
                "stochastic": False, "eta": 0.0, "guidance_scale": guidance_scale, "reduce": "mean", "steps": steps,
                "inversion": "renoise" if renoise_iterations else "ddim", "renoise_iterations": renoise_iterations,
            },
        )
