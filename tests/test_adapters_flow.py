"""Rectified-flow adapters (SD3, FLUX, Wan): parity with diffusers, Flow-GRPO SDE log-probs, LoRA, inversion."""
from __future__ import annotations

import math

import pytest
import torch

from diffalign.pipelines import AdapterError, load
from diffalign.pipelines.flow import calculate_shift, shift_sigmas

FLOW_KINDS = ("sd3", "flux", "wan")
PROMPTS = ["a red circle", "two dogs on a beach"]
#: per family: media size and the guidance used (FLUX: embedded guidance; SD3/Wan: true CFG)
SETTINGS = {
    "sd3": dict(height=32, width=32, guidance_scale=4.5),
    "flux": dict(height=32, width=32, guidance_scale=3.5),
    "wan": dict(height=32, width=32, num_frames=5, guidance_scale=5.0),
}
_ADAPTERS: dict[str, object] = {}


@pytest.fixture
def flow_adapter(tiny_model):
    """Shared (never modified) adapter per kind; tests that add LoRA load their own."""

    def get(kind: str):
        if kind not in _ADAPTERS:
            adapter = load(str(tiny_model(kind)))
            adapter.pipe.set_progress_bar_config(disable=True)
            _ADAPTERS[kind] = adapter
        return _ADAPTERS[kind]

    return get


def _sizes(kind: str) -> dict:
    return {k: v for k, v in SETTINGS[kind].items() if k != "guidance_scale"}


def _pipeline_media(pipe, kind: str, steps: int, seed: int) -> torch.Tensor:
    out = pipe(prompt=PROMPTS, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
               output_type="pt", **SETTINGS[kind])
    return out.frames if kind == "wan" else out.images


# ---------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_deterministic_sampling_matches_diffusers_pipeline(flow_adapter, kind):
    adapter = flow_adapter(kind)
    expected = _pipeline_media(adapter.pipe, kind, steps=3, seed=7)
    rollout = adapter.sample(PROMPTS, steps=3, generator=torch.Generator().manual_seed(7), **SETTINGS[kind])
    assert rollout.media.shape == expected.shape
    assert (rollout.media - expected).abs().max().item() <= 1e-4
    assert rollout.latents.shape[1] == 4 and rollout.sigmas.shape == (4,)
    assert rollout.sigmas[0] == 1.0 and rollout.sigmas[-1] == 0.0


def test_flux_schedule_uses_resolution_dependent_shift(flow_adapter):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_shift

    adapter = flow_adapter("flux")
    latents = adapter.prepare_latents(1, torch.Generator().manual_seed(0), height=64, width=32)
    assert latents.shape == (1, 4, 32, 16)
    tokens = 16 * 8
    assert calculate_shift(tokens) == pytest.approx(diffusers_shift(tokens))
    schedule = adapter._schedule(4, latents=latents)
    mu = calculate_shift(tokens)
    base = torch.linspace(1.0, 0.25, 4)
    expected = math.exp(mu) / (math.exp(mu) + (1 / base - 1))  # exponential time shift of FLUX
    torch.testing.assert_close(schedule["sigmas"][:-1], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(schedule["timesteps"], schedule["sigmas"][:-1] * 1000)


# ---------------------------------------------------------------------------------- SDE log-probs
def _flow_grpo_log_prob_float64(v, x, x_next, sigma, sigma_next, sigma_max, noise_level, reduce):
    """Independent Flow-GRPO transition density, all in float64."""
    v, x, x_next = v.double(), x.double(), x_next.double()
    sigma, sigma_next = float(sigma), float(sigma_next)
    dt = sigma_next - sigma
    std_t = noise_level * math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma)))
    mean = x + (v + std_t**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
    std = std_t * math.sqrt(-dt)
    density = -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    flat = density.flatten(1)
    return flat.mean(1) if reduce == "mean" else flat.sum(1)


@pytest.mark.parametrize("kind", FLOW_KINDS)
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_sde_log_probs_are_on_policy_and_match_the_flow_grpo_density(flow_adapter, kind, reduce):
    adapter = flow_adapter(kind)
    guidance = SETTINGS[kind]["guidance_scale"]
    rollout = adapter.sample(
        PROMPTS, steps=3, generator=torch.Generator().manual_seed(1), stochastic=True, noise_level=0.7,
        log_prob_reduce=reduce, decode=False, **SETTINGS[kind],
    )
    assert rollout.log_probs.shape == (2, 3)
    sigmas = rollout.sigmas
    for step in range(3):
        with torch.no_grad():
            rescored = adapter.step_log_prob(rollout, step)
        ratio = torch.exp(rescored - rollout.log_probs[:, step])
        torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
        x, x_next = rollout.latents[:, step], rollout.latents[:, step + 1]
        with torch.no_grad():
            v = adapter.predict(x, rollout.timesteps[step], rollout.conditioning, guidance)
        reference = _flow_grpo_log_prob_float64(
            v, x, x_next, sigmas[step], sigmas[step + 1], float(sigmas[1]), 0.7, reduce
        )
        tolerance = dict(atol=1e-4, rtol=0) if reduce == "mean" else dict(atol=0, rtol=1e-5)
        torch.testing.assert_close(rollout.log_probs[:, step].double(), reference, **tolerance)


def test_step_log_prob_returns_mean_and_std_and_has_gradients(flow_adapter):
    adapter = flow_adapter("sd3")
    rollout = adapter.sample(PROMPTS[:1], steps=2, generator=torch.Generator().manual_seed(2), stochastic=True,
                             decode=False, **SETTINGS["sd3"])
    log_prob, mean, std = adapter.step_log_prob(rollout, 0, cfg_grad="cond_only", return_mean=True)
    sigma, sigma_next, sigma_max = (float(s) for s in (rollout.sigmas[0], rollout.sigmas[1], rollout.sigmas[1]))
    expected_std = 0.7 * math.sqrt(sigma / (1 - sigma_max)) * math.sqrt(sigma - sigma_next)
    assert torch.allclose(std, torch.full_like(std, expected_std))
    assert (rollout.latents[:, 1] - mean).abs().max() < 6 * expected_std  # the stored draw is near its mean
    denoiser = adapter.trainable_denoiser
    denoiser.requires_grad_(True)
    try:
        log_prob = adapter.step_log_prob(rollout, 0, cfg_grad="cond_only")
        log_prob.sum().backward()
        grad_norm = sum(p.grad.abs().sum() for p in denoiser.parameters() if p.grad is not None)
        assert grad_norm > 0
    finally:
        denoiser.requires_grad_(False)
        denoiser.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_sde_with_zero_noise_is_the_deterministic_sampler(flow_adapter, kind):
    adapter = flow_adapter(kind)
    ode = adapter.sample(PROMPTS, steps=3, generator=torch.Generator().manual_seed(3), decode=False, **SETTINGS[kind])
    schedule = {"timesteps": ode.timesteps, "sigmas": ode.sigmas}
    zero_noise = {"stochastic": True, "noise_level": 0.0, "reduce": "mean"}
    x = ode.latents[:, 0]
    with torch.no_grad():
        for step in range(3):
            v = adapter.predict(x, ode.timesteps[step], ode.conditioning, SETTINGS[kind]["guidance_scale"])
            out = adapter._step(v, step, x, schedule, zero_noise, generator=torch.Generator().manual_seed(9))
            assert out.log_prob is None
            x = out.prev_sample
    assert torch.equal(x, ode.final_latents)
    # and the SDE converges to the ODE as the noise level vanishes
    sde = adapter.sample(PROMPTS, steps=3, generator=torch.Generator().manual_seed(3), stochastic=True,
                         noise_level=1e-7, decode=False, **SETTINGS[kind])
    torch.testing.assert_close(sde.final_latents, ode.final_latents, atol=1e-5, rtol=0)


def test_stochastic_sampling_needs_noise(flow_adapter):
    with pytest.raises(AdapterError, match="noise_level"):
        flow_adapter("sd3").sample(PROMPTS, steps=2, stochastic=True, noise_level=0.0, **_sizes("sd3"))


# ------------------------------------------------------------------------------ training primitives
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_add_noise_and_velocity_target(flow_adapter, kind):
    adapter = flow_adapter(kind)
    x0 = adapter.prepare_latents(2, torch.Generator().manual_seed(4), **_sizes(kind))
    noise = torch.randn_like(x0)
    t = torch.tensor([250.0, 900.0])
    x_t = adapter.add_noise(x0, noise, t)
    sigma = (t / 1000).reshape(-1, *[1] * (x0.ndim - 1))
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * noise)
    target = adapter.training_target(x0, noise, t)
    torch.testing.assert_close(target, noise - x0)
    torch.testing.assert_close(x_t - sigma * target, x0, atol=1e-6, rtol=0)  # x0 = x_t - σ·v


def test_training_timestep_distributions(flow_adapter):
    adapter = flow_adapter("sd3")
    draw = lambda **kw: adapter.sample_training_timesteps(4000, torch.Generator().manual_seed(5), **kw)  # noqa: E731
    uniform = draw(distribution="uniform", shift=1.0, t_min=0.2, t_max=1.0)
    assert uniform.min() >= 200 and uniform.max() <= 1000
    assert abs(uniform.mean().item() - 600) < 15
    shifted = draw(distribution="uniform", shift=3.0, t_min=0.2, t_max=1.0)
    u = (uniform / 1000)
    torch.testing.assert_close(shifted / 1000, shift_sigmas(u, 3.0))  # same draws, time-shifted
    logit_normal = draw(distribution="logit_normal", shift=1.0)
    assert abs(logit_normal.median().item() - 500) < 25  # sigmoid(N(0,1)) is symmetric around 1/2
    default = draw()  # SD3 tiny scheduler: shift 3 from its config
    torch.testing.assert_close(default / 1000, shift_sigmas(logit_normal / 1000, 3.0))
    torch.testing.assert_close(draw(), default)  # reproducible with a generator
    with pytest.raises(AdapterError, match="distribution"):
        adapter.sample_training_timesteps(2, distribution="cosine")


# ------------------------------------------------------------------------------------------ CFG
@pytest.mark.parametrize("kind", ["sd3", "wan"])
def test_cfg_grad_cond_only_detaches_the_unconditional_branch(flow_adapter, kind):
    adapter = flow_adapter(kind)
    with torch.no_grad():
        conditioning = adapter.encode_prompts(PROMPTS[:1], do_cfg=True)
    uncond = {k: v.clone().requires_grad_(True) for k, v in conditioning["uncond"].items()}
    cond = {k: v.clone().requires_grad_(True) for k, v in conditioning["cond"].items()}
    x = adapter.prepare_latents(1, torch.Generator().manual_seed(6), **_sizes(kind))
    t = torch.tensor([600.0])
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    guidance = 4.0

    out = adapter.predict(x, t, {"cond": cond, "uncond": uncond}, guidance, cfg_grad="cond_only")
    (out * weight).sum().backward()
    assert all(v.grad is None for v in uncond.values())
    cond_grad = cond["prompt_embeds"].grad.clone()
    assert cond_grad.abs().sum() > 0
    # d/dc [u + w(c - u)] with u detached is w·dc: the conditional branch alone, scaled by w
    cond["prompt_embeds"].grad = None
    alone = adapter._forward(x, t, {k: v for k, v in cond.items()})
    (guidance * alone * weight).sum().backward()
    torch.testing.assert_close(cond_grad, cond["prompt_embeds"].grad, atol=1e-6, rtol=1e-4)

    both = adapter.predict(x, t, {"cond": cond, "uncond": uncond}, guidance, cfg_grad="both")
    (both * weight).sum().backward()
    assert uncond["prompt_embeds"].grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), both.detach(), atol=1e-5, rtol=0)


def test_flux_guidance_is_a_model_input(flow_adapter):
    adapter = flow_adapter("flux")
    conditioning = adapter.encode_prompts(PROMPTS[:1], do_cfg=True)
    assert conditioning["uncond"] is None
    x = adapter.prepare_latents(1, torch.Generator().manual_seed(8), **_sizes("flux"))
    with torch.no_grad():
        low = adapter.predict(x, torch.tensor([500.0]), conditioning, 1.0)
        high = adapter.predict(x, torch.tensor([500.0]), conditioning, 5.0)
    assert low.shape == x.shape
    assert (low - high).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------ LoRA
# The save_lora -> stock ``load_lora_weights`` round trip and ``reference()`` run for every family in
# tests/test_adapters.py; here only the flow-specific targets.
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_lora_targets_both_mmdit_streams(tiny_model, kind):
    adapter = load(str(tiny_model(kind)))
    adapter.add_lora(rank=2)
    trained = {n for n, p in adapter.trainable_denoiser.named_parameters() if p.requires_grad}
    for module in ("attn.to_q", "attn.to_out.0", "attn.add_q_proj", "attn.to_add_out"):
        assert any(f"{module}.lora_A" in n for n in trained), module  # image and text streams
    assert all(".lora_" in n for n in trained)


# ------------------------------------------------------------------------------------- inversion
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_inversion_then_sampling_reconstructs_latents(flow_adapter, kind):
    adapter = flow_adapter(kind)
    guidance = SETTINGS[kind]["guidance_scale"] if kind == "flux" else 1.0
    sample = adapter.sample(PROMPTS[1:], steps=4, generator=torch.Generator().manual_seed(13), decode=False,
                            guidance_scale=guidance, **_sizes(kind))
    x0, conditioning = sample.final_latents, sample.conditioning

    def reconstruction_error(**options) -> float:
        inverted = adapter.invert(x0, conditioning, steps=4, guidance_scale=guidance, **options)
        assert inverted.latents.shape[1] == 5 and torch.equal(inverted.latents[:, -1], x0)
        again = adapter.sample(PROMPTS[1:], steps=4, guidance_scale=guidance, latents=inverted.latents[:, 0],
                               conditioning=conditioning, decode=False)
        return ((again.final_latents - x0).abs().max() / x0.abs().max()).item()

    naive = reconstruction_error()
    fixed_point = reconstruction_error(renoise_iterations=10, renoise_average=False)
    averaged = reconstruction_error(renoise_iterations=1)
    assert fixed_point <= 1e-4
    assert fixed_point < naive and averaged < naive


def test_partial_inversion_returns_the_tail_of_the_schedule(flow_adapter):
    adapter = flow_adapter("sd3")
    x0 = adapter.prepare_latents(1, torch.Generator().manual_seed(14), **_sizes("sd3"))
    conditioning = adapter.encode_prompts(PROMPTS[:1], do_cfg=False)
    full = adapter._schedule(6, latents=x0)
    partial = adapter.invert(x0, conditioning, steps=6, until_step=2)
    assert partial.latents.shape[1] == 5
    torch.testing.assert_close(partial.timesteps, full["timesteps"][2:])
    torch.testing.assert_close(partial.sigmas, full["sigmas"][2:])
    with pytest.raises(AdapterError, match="until_step"):
        adapter.invert(x0, conditioning, steps=6, until_step=6)


# ---------------------------------------------------------------------------------- media + errors
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_encode_decode_shapes(flow_adapter, kind):
    adapter = flow_adapter(kind)
    latents = adapter.prepare_latents(1, torch.Generator().manual_seed(15), **_sizes(kind))
    with torch.no_grad():
        media = adapter.decode(latents)
        again = adapter.encode(media)
    expected = (1, 5, 3, 32, 32) if kind == "wan" else (1, 3, 32, 32)
    assert media.shape == expected and 0 <= media.min() and media.max() <= 1
    assert again.shape == latents.shape
    with pytest.raises(AdapterError, match="RGB|B×"):
        adapter.encode(torch.rand(1, 4, 32, 32))


def test_bad_sizes_are_rejected(flow_adapter):
    with pytest.raises(AdapterError, match="multiples"):
        flow_adapter("sd3").prepare_latents(1, height=30, width=32)
    with pytest.raises(AdapterError, match="multiples"):
        flow_adapter("flux").prepare_latents(1, height=34, width=32)
    with pytest.raises(AdapterError, match="num_frames"):
        flow_adapter("wan").prepare_latents(1, height=32, width=32, num_frames=6)
    with pytest.raises(AdapterError, match="num_frames"):
        flow_adapter("sd3").prepare_latents(1, height=32, width=32, num_frames=5)
    with pytest.raises(AdapterError, match="negative_prompts"):
        flow_adapter("sd3").encode_prompts(PROMPTS, negative_prompts=["only one"])
