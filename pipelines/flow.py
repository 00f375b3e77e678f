"""The rectified-flow process (SD3/3.5, FLUX, Wan): schedule, sampler steps, noising, inversion.

Notation (ALGORITHMS.md §1): ``σ ∈ [0, 1]`` is the noise level (1 = pure noise), diffusers timesteps are
``t = 1000·σ``, the forward process is ``x_σ = (1-σ)·x0 + σ·ε`` and the network predicts the velocity
``v = ε - x0``. Sampling runs ``σ_0 = 1 > σ_1 > … > σ_S = 0``:

* deterministic: the Euler ODE step ``x_{i+1} = x_i + (σ_{i+1} - σ_i)·v`` of
  ``FlowMatchEulerDiscreteScheduler`` (bit-for-bit the same update);
* stochastic: the Flow-GRPO SDE (:func:`~diffalign.pipelines.samplers.flow_sde_step`) with
  ``noise_level`` ``a``, whose Gaussian transitions give the per-step log-probs.

The schedule is computed by the pipeline's own scheduler class (shift, dynamic shifting with
``mu``, custom sigmas), so timesteps and sigmas are exactly those the diffusers pipeline uses. A pipeline
whose scheduler is not ``FlowMatchEulerDiscreteScheduler`` (the Wan releases ship ``UniPCMultistepScheduler``
with ``flow_shift``) is sampled with an Euler schedule of the same shift: the adapter always samples with
the Euler ODE / Flow-GRPO SDE, never with the multistep solver.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from diffalign.rollout import Rollout

from .base import AdapterError, Conditioning, Generator, check_encode_input
from .samplers import StepOutput, flow_sde_step


def calculate_shift(
    image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX/SD3 resolution-dependent shift ``mu``: linear in the token count between two anchors."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 time shift ``σ' = s·σ / (1 + (s-1)·σ)`` (``s > 1`` moves samples towards noise)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowMatchingProcess:
    """Process mixin for rectified-flow families; put it before :class:`PipelineAdapter` in the bases."""

    prediction_type = "flow"

    # ------------------------------------------------------------------ family hooks
    def _image_seq_len(self, latents: torch.Tensor) -> int:
        """Number of transformer tokens for ``latents`` (drives dynamic shifting)."""
        raise NotImplementedError

    def _custom_sigmas(self, steps: int) -> list[float] | None:
        """Sigmas the pipeline passes to ``set_timesteps`` (FLUX does); ``None`` = scheduler default."""
        return None

    # ------------------------------------------------------------------ schedule
    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.get("num_train_timesteps", 1000))

    def flow_scheduler(self):
        """A fresh Euler flow-matching scheduler with the pipeline's settings (never the pipeline's instance)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = self.scheduler.config
        if isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            return FlowMatchEulerDiscreteScheduler.from_config(config)
        shift = config.get("flow_shift", config.get("shift", 1.0))
        if shift is None or not (config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction"):
            raise AdapterError(
                f"{type(self.scheduler).__name__} is not a flow-matching scheduler; the flow adapter needs "
                "FlowMatchEulerDiscreteScheduler or a scheduler configured with flow sigmas"
            )
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=float(shift))

    def _schedule(
        self, steps: int, latents: torch.Tensor | None = None, sigmas: list[float] | None = None,
        mu: float | None = None, **options,
    ) -> dict[str, torch.Tensor]:
        """``{"timesteps": [S], "sigmas": [S+1]}`` exactly as the diffusers pipeline computes them.

        ``sigmas`` overrides the pipeline's sigma grid (before shifting) and ``mu`` the dynamic shift.
        """
        if options:
            raise AdapterError(f"unknown schedule options for a flow model: {sorted(options)}")
        scheduler = self.flow_scheduler()
        kwargs: dict[str, Any] = {}
        sigmas = sigmas if sigmas is not None else self._custom_sigmas(steps)
        if scheduler.config.get("use_dynamic_shifting") and mu is None:
            if latents is None:
                raise AdapterError("dynamic shifting needs the latents (or an explicit mu) to compute the shift")
            config = scheduler.config
            mu = calculate_shift(
                self._image_seq_len(latents),
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.15),
            )
        if mu is not None:
            kwargs["mu"] = mu
        device = latents.device if latents is not None else self.device
        if sigmas is not None:
            scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        else:
            scheduler.set_timesteps(steps, device=device, **kwargs)
        if len(scheduler.timesteps) != steps:
            raise AdapterError(f"the schedule has {len(scheduler.timesteps)} timesteps but steps={steps}")
        return {"timesteps": scheduler.timesteps, "sigmas": scheduler.sigmas.to(device)}

    # ------------------------------------------------------------------ steps
    def _step(
        self, model_output: torch.Tensor, index: int | torch.Tensor, sample: torch.Tensor, schedule: dict[str, torch.Tensor],
        sampler: dict[str, Any], generator: Generator = None, prev_sample: torch.Tensor | None = None,
    ) -> StepOutput:
        """Euler (``noise_level=0``) or Flow-GRPO SDE step ``σ_index -> σ_index+1``.

        ``sigma_max`` (what replaces ``σ=1`` in ``a·sqrt(σ/(1-σ))``) is ``sigmas[1]`` as in Flow-GRPO.
        """
        sigmas = schedule["sigmas"]
        noise_level = float(sampler.get("noise_level", 0.0)) if sampler.get("stochastic") else 0.0
        sigma_max = float(sampler.get("sigma_max") or sigmas[1])
        return flow_sde_step(
            model_output,
            sample,
            sigmas[index],
            sigmas[index + 1],
            noise_level=noise_level,
            sigma_max=sigma_max,
            generator=generator,
            prev_sample=prev_sample,
            reduce=sampler.get("reduce", "mean"),
        )

    # ------------------------------------------------------------------ training
    def _sigma(self, t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(t, dtype=torch.float32, device=like.device) / self.num_train_timesteps
        if sigma.ndim == 0:
            return sigma
        if sigma.shape[0] != like.shape[0]:
            raise AdapterError(f"timestep batch {sigma.shape[0]} does not match sample batch {like.shape[0]}")
        return sigma.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_σ = (1-σ)·x0 + σ·ε`` with ``σ = t / 1000``."""
        sigma = self._sigma(t, x0)
        return ((1 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)

    def implied_noise(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``ε̃ = (x_σ - (1-σ)·x0) / σ``."""
        sigma = self._sigma(t, x0)
        if (sigma <= 0).any():
            raise AdapterError("implied_noise needs sigma > 0: at sigma = 0, x_t carries no noise")
        return ((x_t.float() - (1 - sigma) * x0.float()) / sigma).to(x0.dtype)

    def predicted_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``x̂0 = x_σ - σ·v̂``."""
        sigma = self._sigma(t, x_t)
        return (x_t.float() - sigma * model_output.float()).to(x_t.dtype)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Flow-matching velocity target ``ε - x0`` (independent of ``t``)."""
        return noise - x0

    def sample_training_timesteps(
        self, batch_size: int, generator: Generator = None, *, distribution: str = "logit_normal",
        shift: float | None = None, logit_mean: float = 0.0, logit_std: float = 1.0,
        t_min: float = 0.0, t_max: float = 1.0,
    ) -> torch.Tensor:
        """Continuous training timesteps ``[B]`` (diffusers units, ``1000·σ``).

        ``u`` is drawn uniform on ``[t_min, t_max]`` (AWM: ``[0.2, 1]`` with shift 3) or logit-normal
        ``sigmoid(N(logit_mean, logit_std²))`` (the SD3 paper's default), then time-shifted
        ``σ = s·u / (1 + (s-1)·u)``. ``shift`` defaults to the scheduler's static ``shift`` (1 under dynamic
        shifting, where the shift depends on resolution; pass it explicitly there).
        """
        from diffusers.training_utils import compute_density_for_timestep_sampling

        if distribution not in ("uniform", "logit_normal"):
            raise AdapterError(f"distribution must be 'uniform' or 'logit_normal', got {distribution!r}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise AdapterError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        gen = generator[0] if isinstance(generator, list) else generator
        device = gen.device if gen is not None else self.device
        u = compute_density_for_timestep_sampling(
            distribution, batch_size, logit_mean=logit_mean, logit_std=logit_std, device=device, generator=gen
        )
        if distribution == "uniform":
            u = t_min + (t_max - t_min) * u
        if shift is None:
            config = self.scheduler.config
            shift = 1.0 if config.get("use_dynamic_shifting") else float(config.get("shift", config.get("flow_shift", 1.0)) or 1.0)
        sigma = shift_sigmas(u.float(), shift)
        return (sigma * self.num_train_timesteps).to(self.device)

    # ------------------------------------------------------------------ inversion
    @torch.no_grad()
    def invert(
        self, x0: torch.Tensor, conditioning: Conditioning, steps: int = 50, guidance_scale: float = 1.0,
        renoise_iterations: int = 0, until_step: int | None = None, *, renoise_average: bool = True,
        **schedule_options,
    ) -> Rollout:
        """Reverse Euler inversion ``x0 -> x_σ`` along the sampling schedule.

        Going up from ``σ_{i+1}`` to ``σ_i`` solves the Euler step ``x_{i+1} = x_i + (σ_{i+1} - σ_i)·v(x_i, t_i)``
        for ``x_i``. ``v`` at the unknown ``x_i`` is first approximated by ``v_here = v(x_{i+1}, t_i)``. ReNoise
        (``renoise_iterations = K``) then re-evaluates ``v_there = v(x_i^{(k)}, t_i)`` at the current estimate
        ``K`` times and redoes the step from ``x_{i+1}`` with ``(v_here + v_there)/2`` (``renoise_average``, the
        SmPO/ReNoise averaging, as the VP inversion does) or with ``v_there`` alone (plain fixed-point
        iteration, which converges to the exact inverse of the Euler step when ``|Δσ|·Lip(v) < 1``).
        ``until_step=k`` stops at ``σ_k`` (default 0: pure noise); the returned rollout's ``latents`` run from
        that point to ``x0`` with the matching tail of the schedule, so deterministic sampling from
        ``latents[:, 0]`` (with ``until_step=None``) reconstructs ``x0``. Prompts of the rollout are empty.
        """
        steps = self._check_steps(steps)
        if not isinstance(renoise_iterations, int) or renoise_iterations < 0:
            raise AdapterError(f"renoise_iterations must be a non-negative integer, got {renoise_iterations!r}")
        start = 0 if until_step is None else int(until_step)
        if not 0 <= start < steps:
            raise AdapterError(f"until_step must be in [0, {steps}), got {until_step}")
        schedule = self._schedule(steps, latents=x0, **schedule_options)
        timesteps, sigmas = schedule["timesteps"], schedule["sigmas"]
        x = x0.float()
        states = [x]
        for index in range(steps - 1, start - 1, -1):
            t = timesteps[index]
            delta = (sigmas[index] - sigmas[index + 1]).float()  # > 0: moving towards noise
            v_here = self.predict(x, t, conditioning, guidance_scale).float()
            guess = x + delta * v_here
            for _ in range(renoise_iterations):
                v_there = self.predict(guess, t, conditioning, guidance_scale).float()
                guess = x + delta * (0.5 * (v_here + v_there) if renoise_average else v_there)
            x = guess
            states.append(x)
        states.reverse()
        sampler = {
            "stochastic": False, "eta": 0.0, "noise_level": 0.0, "guidance_scale": guidance_scale,
            "reduce": "mean", "steps": steps, "inversion": "renoise" if renoise_iterations else "euler",
            "renoise_iterations": renoise_iterations, "renoise_average": renoise_average,
            **schedule_options,
        }
        return Rollout(
            prompts=[""] * x0.shape[0],
            latents=torch.stack(states, dim=1).to(x0.dtype),
            timesteps=timesteps[start:],
            sigmas=sigmas[start:],
            conditioning=conditioning,
            sampler=sampler,
        )


#: LoRA targets of MMDiT joint attention (SD3, FLUX): both the image and the text stream, as Flow-GRPO
JOINT_ATTENTION_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)


def kl_vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """SD3/FLUX autoencoder: ``x = D(z / scaling + shift)`` mapped from [-1, 1] to [0, 1] (differentiable)."""
    config = vae.config
    z = latents / config.scaling_factor + (config.shift_factor or 0.0)
    images = vae.decode(z.to(vae.dtype), return_dict=False)[0]
    return (images.float() * 0.5 + 0.5).clamp(0, 1)


def kl_vae_encode(vae, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Inverse of :func:`kl_vae_decode`: posterior mean (or a posterior sample with ``generator``)."""
    check_encode_input(images, "image")
    config = vae.config
    posterior = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist
    z = posterior.sample(generator) if generator is not None else posterior.mode()
    return ((z.float() - (config.shift_factor or 0.0)) * config.scaling_factor)
