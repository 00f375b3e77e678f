"""Adapter contract tests for every family in ``tests.tiny.BUILDERS`` (parity with the diffusers pipeline,
re-scored log-probs, LoRA round trip through stock diffusers, reference model, bad input, memory options).

A family whose tiny builder or adapter module is not written yet is skipped with the reason.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from diffalign.pipelines import ADAPTERS, AdapterError, UnsupportedPipelineError, load
from diffalign.pipelines.samplers import LOG_SQRT_2PI
from tests.tiny import BUILDERS, SMALL_SAMPLE_SIZE

KINDS = sorted(BUILDERS)
PROMPTS = ["a red circle above a blue square", "two green cats"]
STEPS = 4
TOL = 1e-4


def _load(tiny_model, kind: str):
    try:
        path = tiny_model(kind)
    except ModuleNotFoundError as err:
        pytest.skip(f"tiny builder for {kind!r} not written yet ({err.name})")
    try:
        adapter = load(path)
    except UnsupportedPipelineError as err:
        pytest.skip(f"no adapter registered for {kind!r} yet: {err}")
    adapter.pipe.set_progress_bar_config(disable=True)
    return path, adapter


def _stock_pipeline(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_media(pipe, rollout, guidance_scale, seed, negative_prompts=None) -> torch.Tensor:
    """The diffusers pipeline's own output (``output_type="pt"``) at the adapter's output size."""
    media = rollout.media
    kwargs = {"height": media.shape[-2], "width": media.shape[-1]}
    if media.ndim == 5:
        kwargs["num_frames"] = media.shape[1]
    if negative_prompts is not None:
        kwargs["negative_prompt"] = negative_prompts
    out = pipe(
        list(rollout.prompts), num_inference_steps=rollout.num_steps, guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs,
    )
    return out.images if hasattr(out, "images") else out.frames


#: media size for families whose pipeline default is too large for CPU tests (Wan: 480×832, 81 frames, and
#: no size in the model configs to derive a smaller one from)
SMALL_SIZE = SMALL_SAMPLE_SIZE


def _sample(adapter, guidance_scale=1.0, seed=0, **kwargs):
    kwargs = {**SMALL_SIZE.get(adapter.family, {}), **kwargs}
    return adapter.sample(PROMPTS, STEPS, guidance_scale, generator=torch.Generator().manual_seed(seed), **kwargs)


# ------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("kind", KINDS)
def test_load_path_and_object_give_the_registered_adapter(tiny_model, kind):
    path, adapter = _load(tiny_model, kind)
    class_name = type(adapter.pipe).__name__
    assert type(adapter) is ADAPTERS.get(class_name)
    assert class_name in type(adapter).pipeline_classes
    assert type(load(adapter.pipe)) is type(adapter)
    assert load(adapter) is adapter
    assert adapter.modality in ("image", "video")
    assert isinstance(adapter.denoiser, torch.nn.Module) and adapter.denoiser is getattr(adapter.pipe, adapter.denoiser_name)
    # only the denoiser is trainable
    frozen = [m for n, m in adapter.pipe.components.items() if isinstance(m, torch.nn.Module) and n != adapter.denoiser_name]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())


def test_load_rejects_unsupported_pipelines(tmp_path):
    class NotAPipeline:
        pass

    with pytest.raises(UnsupportedPipelineError, match="NotAPipeline"):
        load(NotAPipeline())
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(UnsupportedPipelineError, match="KandinskyPipeline"):
        load(tmp_path)
    with pytest.raises(AdapterError, match="model_index.json"):
        load(tmp_path / "..")


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_sampling_matches_the_pipeline(tiny_model, kind):
    _, adapter = _load(tiny_model, kind)
    plain = _sample(adapter, 1.0, seed=3)
    assert plain.latents.shape[:2] == (len(PROMPTS), STEPS + 1) and plain.log_probs is None
    assert plain.media.ndim == (4 if adapter.modality == "image" else 5)
    assert 0 <= plain.media.min() and plain.media.max() <= 1
    expected = _pipeline_media(adapter.pipe, plain, 1.0, seed=3)
    assert (plain.media - expected).abs().max().item() <= TOL
    if adapter.distilled_guidance:
        return
    guided = _sample(adapter, 4.0, seed=3)
    expected = _pipeline_media(adapter.pipe, guided, 4.0, seed=3)
    assert (guided.media - expected).abs().max().item() <= TOL
    assert (guided.media - plain.media).abs().max().item() > 10 * TOL, "guidance must change the output"
    negative = ["blue", "a dog"]
    with_negative = _sample(adapter, 4.0, seed=3, negative_prompts=negative)
    expected = _pipeline_media(adapter.pipe, with_negative, 4.0, seed=3, negative_prompts=negative)
    assert (with_negative.media - expected).abs().max().item() <= TOL
    assert (with_negative.media - guided.media).abs().max().item() > 10 * TOL


# --------------------------------------------------------------------------------------- log-probs
@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("kind", KINDS)
def test_step_log_prob_rescores_the_recorded_rollout(tiny_model, kind, reduce):
    _, adapter = _load(tiny_model, kind)
    rollout = _sample(adapter, 3.0, seed=1, stochastic=True, log_prob_reduce=reduce, decode=False)
    assert rollout.log_probs.shape == (len(PROMPTS), STEPS)
    assert torch.isfinite(rollout.log_probs).all()
    with torch.no_grad():
        for step in range(rollout.num_steps):
            log_prob, mean, std = adapter.step_log_prob(rollout, step, return_mean=True)
            ratio = torch.exp(log_prob - rollout.log_probs[:, step])
            assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
            # independent float64 Gaussian log-density of the stored transition
            x_next = rollout.latents[:, step + 1].double()
            m, s = mean.double(), std.double()
            if (s == 0).all():  # a deterministic last step (ᾱ_prev = 1) carries log-prob 0
                assert (rollout.log_probs[:, step] == 0).all() and torch.equal(x_next, m.to(x_next.dtype))
                continue
            density = -((x_next - m) ** 2) / (2 * s**2) - torch.log(s) - LOG_SQRT_2PI
            density = density.flatten(1)
            expected = density.mean(1) if reduce == "mean" else density.sum(1)
            assert torch.allclose(rollout.log_probs[:, step].double(), expected, rtol=1e-5, atol=1e-5 * density.shape[1])


@pytest.mark.parametrize("kind", KINDS)
def test_step_log_prob_takes_a_step_per_sample(tiny_model, kind):
    """One call with per-sample step indices equals each sample's own single-step call (DDPO's shuffled time axis)."""
    _, adapter = _load(tiny_model, kind)
    rollout = _sample(adapter, 3.0, seed=2, stochastic=True, decode=False)
    steps = torch.tensor([STEPS - 1, 1])
    with torch.no_grad():
        log_prob, mean, std = adapter.step_log_prob(rollout, steps, return_mean=True)
        for i, step in enumerate(steps.tolist()):
            one, one_mean, one_std = adapter.step_log_prob(rollout[i], step, return_mean=True)
            torch.testing.assert_close(log_prob[i : i + 1], one, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(mean[i : i + 1], one_mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(std[i : i + 1], one_std.expand_as(mean[i : i + 1]), rtol=1e-5, atol=1e-7)
            assert (log_prob[i] - rollout.log_probs[i, step]).abs() < 1e-5
    with pytest.raises(AdapterError, match="step"):
        adapter.step_log_prob(rollout, torch.tensor([0, STEPS]))
    with pytest.raises(AdapterError, match="step"):
        adapter.step_log_prob(rollout, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_sde_window_is_stochastic_only_inside(tiny_model, kind):
    """Flow-GRPO-Fast rollouts: outside the window every step is the deterministic sampler's step (log-prob 0);
    inside, the noise is injected and re-scored exactly; a window over every step is plain stochastic sampling."""
    _, adapter = _load(tiny_model, kind)
    windowed = _sample(adapter, 1.0, seed=4, stochastic=True, sde_window=(1, 3), decode=False)
    assert windowed.sampler["sde_window"] == [1, 3]
    assert (windowed.log_probs[:, [0, 3]] == 0).all() and (windowed.log_probs[:, 1:3] != 0).all()
    with torch.no_grad():
        for step in range(STEPS):
            x = windowed.latents[:, step]
            out = adapter.predict(x, windowed.timesteps[step], windowed.conditioning, 1.0)
            ode = adapter._step(out, step, x, {"timesteps": windowed.timesteps, "sigmas": windowed.sigmas},
                                {"stochastic": False, "eta": 0.0, "noise_level": 0.0, "steps": STEPS}).prev_sample
            moved = (windowed.latents[:, step + 1] - ode.to(x.dtype)).abs().max().item()
            if step in (1, 2):
                assert moved > 1e-3, f"step {step} is inside the window: noise must be injected"
                rescored = adapter.step_log_prob(windowed, step)
                assert (rescored - windowed.log_probs[:, step]).abs().max() < 1e-5
            else:
                assert moved < 1e-5, f"step {step} is outside the window: it must be the deterministic step"
                with pytest.raises(AdapterError, match="outside the rollout's SDE window"):
                    adapter.step_log_prob(windowed, step)
    everything = _sample(adapter, 1.0, seed=4, stochastic=True, sde_window=(0, STEPS), decode=False)
    plain = _sample(adapter, 1.0, seed=4, stochastic=True, decode=False)
    torch.testing.assert_close(everything.latents, plain.latents, rtol=0, atol=0)
    with pytest.raises(AdapterError, match="sde_window"):
        _sample(adapter, 1.0, stochastic=True, sde_window=(2, STEPS + 1), decode=False)
    with pytest.raises(AdapterError, match="stochastic"):
        _sample(adapter, 1.0, sde_window=(0, 2), decode=False)


@pytest.mark.parametrize("kind", KINDS)
def test_step_log_prob_has_gradients_and_checks_its_input(tiny_model, kind):
    _, adapter = _load(tiny_model, kind)
    rollout = _sample(adapter, 1.0, stochastic=True, decode=False)
    log_prob = adapter.step_log_prob(rollout, 0)
    log_prob.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.trainable_denoiser.parameters())
    with pytest.raises(AdapterError, match="step"):
        adapter.step_log_prob(rollout, STEPS)
    with pytest.raises(AdapterError, match="deterministic"):
        adapter.step_log_prob(_sample(adapter, 1.0, decode=False), 0)


# -------------------------------------------------------------------------------------- LoRA + ref
def _perturb_lora(adapter, scale: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in adapter.trainable_denoiser.named_parameters():
            if "lora_B" in name:
                param.copy_(scale * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("kind", KINDS)
def test_lora_round_trip_through_stock_diffusers(tiny_model, kind, tmp_path):
    path, adapter = _load(tiny_model, kind)
    base = _sample(adapter, 1.0, seed=5)
    adapter.add_lora(rank=4)
    trainable = adapter.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(".lora_" in n for n, p in adapter.trainable_denoiser.named_parameters() if p.requires_grad)
    _perturb_lora(adapter)
    tuned = _sample(adapter, 1.0, seed=5)
    assert (tuned.media - base.media).abs().max().item() > 10 * TOL, "LoRA perturbation must change the output"
    saved = adapter.save_lora(tmp_path / "lora")
    assert (saved / "pytorch_lora_weights.safetensors").exists()

    stock = _stock_pipeline(path)
    stock.load_lora_weights(str(saved))
    assert (_pipeline_media(stock, tuned, 1.0, seed=5) - tuned.media).abs().max().item() <= TOL

    with adapter.reference():
        reference = _sample(adapter, 1.0, seed=5)
    assert (reference.media - base.media).abs().max().item() <= TOL
    assert (_pipeline_media(_stock_pipeline(path), reference, 1.0, seed=5) - reference.media).abs().max().item() <= TOL
    # adapters are back on after the context
    assert (_sample(adapter, 1.0, seed=5).media - tuned.media).abs().max().item() <= TOL


@pytest.mark.parametrize("kind", KINDS)
def test_full_finetuning_reference_is_the_frozen_snapshot(tiny_model, kind):
    path, adapter = _load(tiny_model, kind)
    base = _sample(adapter, 1.0, seed=2)
    adapter.trainable_denoiser.requires_grad_(True)
    adapter.freeze_reference()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for param in adapter.trainable_denoiser.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    tuned = _sample(adapter, 1.0, seed=2)
    assert (tuned.media - base.media).abs().max().item() > 10 * TOL
    with adapter.reference():
        assert adapter.denoiser is not adapter.trainable_denoiser
        reference = _sample(adapter, 1.0, seed=2)
    assert (reference.media - base.media).abs().max().item() <= TOL
    assert (_pipeline_media(_stock_pipeline(path), reference, 1.0, seed=2) - reference.media).abs().max().item() <= TOL
    assert adapter.denoiser is adapter.trainable_denoiser


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_raises_errors_that_name_the_problem(tiny_model, kind):
    _, adapter = _load(tiny_model, kind)
    with pytest.raises(AdapterError, match="prompts is empty"):
        adapter.sample([], STEPS)
    for steps in (0, -3):
        with pytest.raises(AdapterError, match="steps must be a positive integer"):
            adapter.sample(PROMPTS, steps)
    latents = adapter.prepare_latents(3, torch.Generator().manual_seed(0), **SMALL_SIZE.get(adapter.family, {}))
    with pytest.raises(AdapterError, match="latents batch"):
        adapter.sample(PROMPTS, STEPS, latents=latents)
    conditioning = adapter.encode_prompts(PROMPTS, do_cfg=True)
    with pytest.raises(AdapterError, match="conditioning batch"):
        adapter.predict(latents, adapter._schedule(STEPS, latents=latents)["timesteps"][0], conditioning, 2.0)
    with pytest.raises(ValueError, match="(?i)negative"):
        adapter.encode_prompts(PROMPTS, negative_prompts=["only one"], do_cfg=True)


# ------------------------------------------------------------------------------------------ memory
@pytest.mark.parametrize("kind", KINDS)
def test_memory_options_keep_sampling_unchanged(tiny_model, kind):
    _, adapter = _load(tiny_model, kind)
    before = _sample(adapter, 1.0, seed=4)
    with pytest.warns(RuntimeWarning, match="xformers"):
        adapter.configure_memory(attention="xformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter.configure_memory(vae_slicing=True, gradient_checkpointing=True)
    assert getattr(adapter.pipe.vae, "use_slicing", True)
    assert adapter.trainable_denoiser.is_gradient_checkpointing
    after = _sample(adapter, 1.0, seed=4)
    assert (after.media - before.media).abs().max().item() <= TOL
    # tiling only changes how the VAE decodes (blended tiles); the denoising trajectory is untouched
    adapter.configure_memory(vae_tiling=True)
    assert getattr(adapter.pipe.vae, "use_tiling", True)
    tiled = _sample(adapter, 1.0, seed=4, decode=False)
    assert (tiled.final_latents - before.final_latents).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="attention"):
        adapter.configure_memory(attention="flash-magic")
