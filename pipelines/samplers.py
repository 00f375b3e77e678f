"""Sampler steps that return the Gaussian log-density of the transition they take.

Two policy steps cover every family (see ALGORITHMS.md §C.2):

* :func:`ddim_step` — DDIM with ``eta`` for variance-preserving models (epsilon, v or sample
  prediction). ``eta=0`` is the deterministic DDIM sampler of ``diffusers.DDIMScheduler``.
* :func:`flow_sde_step` — the marginal-preserving SDE of Flow-GRPO for rectified-flow models:
  ``dx = [v + σ_t²/(2t)(x + (1-t)v)] dt + σ_t dw`` with ``σ_t = a·sqrt(t/(1-t))``, one Euler–Maruyama
  step. ``a=0`` is the Euler ODE step of ``FlowMatchEulerDiscreteScheduler``.

All step math runs in float32 (bf16 overflows in the SDE mean). When ``prev_sample`` is given the
step re-scores that stored transition instead of drawing a new one. Log-densities are reduced over
all non-batch dims with ``reduce="mean"`` (the convention every official repo uses; clip ranges such
as 1e-4 are calibrated to it) or ``"sum"`` (the exact density).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOutput:
    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor  # broadcastable to the sample
    log_prob: torch.Tensor | None  # [B], None when the step is deterministic


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Scalar or ``[B]`` -> a tensor broadcastable against ``like`` (``B×...``)."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def gaussian_log_prob(
    sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduce: str = "mean"
) -> torch.Tensor:
    """log N(sample; mean, std²) per element, reduced over all non-batch dims -> ``[B]``."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    std = std.float()
    log_density = -((sample.detach().float() - mean.float()) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    dims = tuple(range(1, log_density.ndim))
    return log_density.mean(dim=dims) if reduce == "mean" else log_density.sum(dim=dims)


def _draw(shape_like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape_like.shape, generator=generator, device=shape_like.device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------- DDIM
def ddim_x0_and_eps(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a VP model output into ``(x̂0, ε̂)`` for ``epsilon``, ``v_prediction`` or ``sample``."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - beta_prod_t.sqrt() * eps) / alpha_prod_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
        eps = alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - alpha_prod_t.sqrt() * x0) / beta_prod_t.sqrt()
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return x0, eps


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor | float,
    alpha_prod_t_prev: torch.Tensor | float,
    *,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    prev_sample: torch.Tensor | None = None,
    clip_sample_range: float | None = None,
    reduce: str = "mean",
) -> StepOutput:
    """One DDIM step ``x_t -> x_{t-1}`` (Song et al. eq. 12) with its Gaussian log-density.

    ``x̂0 = (x_t - sqrt(1-ᾱ_t) ε̂)/sqrt(ᾱ_t)``,
    ``σ_t = η · sqrt((1-ᾱ_{t-1})/(1-ᾱ_t)) · sqrt(1-ᾱ_t/ᾱ_{t-1})``,
    ``μ = sqrt(ᾱ_{t-1}) x̂0 + sqrt(1-ᾱ_{t-1}-σ_t²) ε̂``, ``x_{t-1} = μ + σ_t z``.
    ``alpha_prod_*`` may be scalars or per-sample ``[B]`` tensors.
    """
    # float32 at least (float64 stays float64: finite-difference checks of reward gradients)
    precision = torch.promote_types(sample.dtype, torch.float32)
    sample32 = sample.to(precision)
    a_t = _per_sample(alpha_prod_t, sample32)
    a_prev = _per_sample(alpha_prod_t_prev, sample32)
    x0, eps = ddim_x0_and_eps(model_output.to(precision), sample32, a_t, prediction_type)
    if clip_sample_range is not None:  # like diffusers' DDIM: only x̂0 is clipped, ε̂ stays the model's
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.clamp(min=0).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    std = std.expand_as(mean)
    stochastic = eta > 0
    if prev_sample is None:
        prev_sample = mean + std * _draw(mean, generator) if stochastic else mean
    log_prob = None
    if stochastic:
        # ᾱ_prev = 1 (set_alpha_to_one, e.g. CogVideoX's last step) gives σ_t = 0: a deterministic
        # transition, which adds nothing to the trajectory log-likelihood (log-prob 0 instead of NaN)
        zero_std = std == 0
        log_prob = gaussian_log_prob(prev_sample, mean, torch.where(zero_std, torch.ones_like(std), std), reduce)
        log_prob = torch.where(zero_std.flatten(1).all(dim=1), torch.zeros_like(log_prob), log_prob)
    return StepOutput(prev_sample=prev_sample, mean=mean, std=std, log_prob=log_prob)


# --------------------------------------------------------------------------------------- flow SDE
def flow_sde_std(sigma: torch.Tensor, noise_level: float, sigma_max: float) -> torch.Tensor:
    """``σ_t = a·sqrt(σ/(1-σ))``, with ``σ=1`` replaced by ``sigma_max`` in the denominator."""
    safe = torch.where(sigma >= 1, torch.as_tensor(sigma_max, dtype=sigma.dtype, device=sigma.device), sigma)
    return noise_level * torch.sqrt(sigma / (1 - safe))


def flow_sde_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    *,
    noise_level: float = 0.7,
    sigma_max: float = 0.999,
    generator: torch.Generator | list[torch.Generator] | None = None,
    prev_sample: torch.Tensor | None = None,
    reduce: str = "mean",
) -> StepOutput:
    """One Euler–Maruyama step of the Flow-GRPO SDE from ``σ`` to ``σ_next < σ``.

    ``dt = σ_next - σ``, ``μ = x + [v + σ_t²/(2σ)·(x + (1-σ)v)]·dt``, ``x_next = μ + σ_t·sqrt(-dt)·z``.
    ``sigma_max`` is the largest noise level below 1 on the schedule (Flow-GRPO uses ``sigmas[1]``).
    """
    x = sample.float()
    v = velocity.float()
    s = _per_sample(sigma, x)
    s_next = _per_sample(sigma_next, x)
    dt = s_next - s
    std_t = flow_sde_std(s, noise_level, sigma_max)
    mean = x + (v + std_t**2 / (2 * s) * (x + (1 - s) * v)) * dt
    std = (std_t * torch.sqrt(-dt)).expand_as(mean)
    stochastic = noise_level > 0
    if prev_sample is None:
        prev_sample = mean + std * _draw(mean, generator) if stochastic else mean
    log_prob = gaussian_log_prob(prev_sample, mean, std, reduce) if stochastic else None
    return StepOutput(prev_sample=prev_sample, mean=mean, std=std, log_prob=log_prob)
