"""Sampler steps against diffusers' schedulers and against the Gaussian log-density written out in float64."""
from __future__ import annotations

import math

import pytest
import torch

from diffalign.pipelines.samplers import ddim_step, flow_sde_std, flow_sde_step, gaussian_log_prob

SHAPE = (2, 4, 6, 6)


def _sd_ddim(**config):
    from diffusers import DDIMScheduler

    base = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    return DDIMScheduler(**{**base, **config})


def _alphas(scheduler, t: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    prev = t - scheduler.config.num_train_timesteps // steps
    a_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    return scheduler.alphas_cumprod[t], a_prev


def _ddim_density64(model_output, sample, prev_sample, a_t, a_prev, eta, prediction_type, reduce):
    """Song et al. eq. 12 and the Gaussian log-density, all in float64."""
    x, out, y = sample.double(), model_output.double(), prev_sample.double()
    a_t, a_prev = torch.as_tensor(a_t, dtype=torch.float64), torch.as_tensor(a_prev, dtype=torch.float64)
    if prediction_type == "epsilon":
        eps = out
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    else:  # v_prediction
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
    sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
    density = -((y - mean) ** 2) / (2 * sigma**2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    density = density.flatten(1)
    return density.mean(1) if reduce == "mean" else density.sum(1)


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_matches_diffusers_deterministic_and_stochastic(prediction_type, clip_sample, set_alpha_to_one):
    steps = 8
    scheduler = _sd_ddim(
        prediction_type=prediction_type, clip_sample=clip_sample, clip_sample_range=0.8, set_alpha_to_one=set_alpha_to_one
    )
    scheduler.set_timesteps(steps)
    torch.manual_seed(0)
    x_det = x_sto = torch.randn(SHAPE)
    for i, t in enumerate(scheduler.timesteps):
        out = torch.randn(SHAPE)
        a_t, a_prev = _alphas(scheduler, int(t), steps)
        clip = 0.8 if clip_sample else None
        expected = scheduler.step(out, t, x_det).prev_sample
        got = ddim_step(out, x_det, a_t, a_prev, prediction_type=prediction_type, clip_sample_range=clip)
        assert got.log_prob is None
        assert torch.allclose(got.prev_sample, expected, atol=1e-5, rtol=1e-5)
        expected = scheduler.step(out, t, x_sto, eta=1.0, generator=torch.Generator().manual_seed(i)).prev_sample
        got = ddim_step(
            out, x_sto, a_t, a_prev, prediction_type=prediction_type, clip_sample_range=clip, eta=1.0,
            generator=torch.Generator().manual_seed(i),
        )
        assert torch.allclose(got.prev_sample, expected, atol=1e-5, rtol=1e-5)
        assert torch.isfinite(got.log_prob).all()
        x_det, x_sto = scheduler.step(out, t, x_det).prev_sample, expected


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_log_prob_is_the_gaussian_density_and_rescoring_reproduces_it(prediction_type, reduce):
    torch.manual_seed(1)
    sample, out = torch.randn(SHAPE), torch.randn(SHAPE)
    a_t, a_prev = torch.tensor([0.3, 0.5]), torch.tensor([0.45, 0.7])  # per-sample alphas
    drawn = ddim_step(out, sample, a_t, a_prev, prediction_type=prediction_type, eta=1.0, reduce=reduce,
                      generator=torch.Generator().manual_seed(0))
    expected = _ddim_density64(out, sample, drawn.prev_sample, a_t.view(-1, 1, 1, 1), a_prev.view(-1, 1, 1, 1),
                               1.0, prediction_type, reduce)
    assert torch.allclose(drawn.log_prob.double(), expected, rtol=1e-5, atol=1e-5)
    rescored = ddim_step(out, sample, a_t, a_prev, prediction_type=prediction_type, eta=1.0, reduce=reduce,
                         prev_sample=drawn.prev_sample)
    assert torch.equal(rescored.log_prob, drawn.log_prob)
    # the mean is the most likely next sample
    at_mean = ddim_step(out, sample, a_t, a_prev, prediction_type=prediction_type, eta=1.0, reduce=reduce,
                        prev_sample=drawn.mean)
    assert (at_mean.log_prob > drawn.log_prob).all()
    # per-sample alphas give the same as one sample at a time
    for b in range(2):
        single = ddim_step(out[b : b + 1], sample[b : b + 1], a_t[b], a_prev[b], prediction_type=prediction_type,
                           eta=1.0, reduce=reduce, prev_sample=drawn.prev_sample[b : b + 1])
        assert torch.allclose(single.log_prob, drawn.log_prob[b : b + 1], rtol=1e-6, atol=1e-6)


def test_ddim_zero_variance_step_has_log_prob_zero_and_finite_gradient():
    out = torch.randn(SHAPE, requires_grad=True)
    step = ddim_step(out, torch.randn(SHAPE), torch.tensor(0.9), torch.tensor(1.0), eta=1.0)
    assert torch.equal(step.prev_sample, step.mean) and (step.std == 0).all()
    assert torch.equal(step.log_prob, torch.zeros(SHAPE[0]))
    step.log_prob.sum().backward()
    assert torch.isfinite(out.grad).all()


def test_ddim_step_matches_cogvideox_ddim_scheduler():
    from diffusers import CogVideoXDDIMScheduler

    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", prediction_type="v_prediction", rescale_betas_zero_snr=True,
        set_alpha_to_one=True, clip_sample=False, timestep_spacing="trailing", snr_shift_scale=3.0,
    )
    steps = 6
    scheduler.set_timesteps(steps)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 4, 4)
    for t in scheduler.timesteps:
        out = torch.randn_like(x)
        a_t, a_prev = _alphas(scheduler, int(t), steps)
        expected = scheduler.step(out, t, x).prev_sample
        got = ddim_step(out, x, a_t, a_prev, prediction_type="v_prediction")
        assert torch.allclose(got.prev_sample, expected, atol=1e-5, rtol=1e-5)
        x = expected


def test_flow_sde_step_is_euler_without_noise_and_a_gaussian_with_it():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    sigmas = scheduler.sigmas
    torch.manual_seed(3)
    x = torch.randn(SHAPE)
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(SHAPE)
        expected = scheduler.step(v, t, x).prev_sample
        got = flow_sde_step(v, x, sigmas[i], sigmas[i + 1], noise_level=0.0)
        assert got.log_prob is None and torch.allclose(got.prev_sample, expected, atol=1e-5)
        # SDE step: density of the drawn sample, from the formula in float64
        sde = flow_sde_step(v, x, sigmas[i], sigmas[i + 1], noise_level=0.7, sigma_max=float(sigmas[1]),
                            reduce="sum", generator=torch.Generator().manual_seed(i))
        s, s_next = sigmas[i].double(), sigmas[i + 1].double()
        dt = s_next - s
        std_t = 0.7 * torch.sqrt(s / (1 - (sigmas[1].double() if s >= 1 else s)))
        mean = x.double() + (v.double() + std_t**2 / (2 * s) * (x.double() + (1 - s) * v.double())) * dt
        std = std_t * torch.sqrt(-dt)
        density = -((sde.prev_sample.double() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
        assert torch.allclose(sde.log_prob.double(), density.flatten(1).sum(1), rtol=1e-5)
        assert torch.allclose(sde.std[0, 0, 0, 0].double(), std, rtol=1e-5)
        x = expected
    assert torch.allclose(flow_sde_std(torch.tensor(1.0), 0.7, 0.9), torch.tensor(0.7 * math.sqrt(1 / 0.1)))


def test_gaussian_log_prob_rejects_unknown_reduction():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="reduce"):
        gaussian_log_prob(x, x, torch.ones_like(x), reduce="max")
