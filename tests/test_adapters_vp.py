"""Variance-preserving families (SD 1.5 ε, SD 2 v, SDXL, CogVideoX v): schedule math against diffusers,
the DDIM transition density from its formula, stochastic parity, DDIM / ReNoise inversion."""
from __future__ import annotations

import math

import pytest
import torch

from diffalign.pipelines import AdapterError, load
from tests.test_adapters import _pipeline_media

VP_KINDS = ["sd15", "sd2", "sdxl", "cogvideox"]
PROMPTS = ["a red circle above a blue square", "two green cats"]


def _adapter(tiny_model, kind):
    adapter = load(tiny_model(kind))
    adapter.pipe.set_progress_bar_config(disable=True)
    return adapter


@pytest.mark.parametrize("kind", ["sd15", "sd2", "cogvideox"])
def test_add_noise_and_training_target_match_the_scheduler(tiny_model, kind):
    adapter = _adapter(tiny_model, kind)
    scheduler = adapter.scheduler
    x0 = adapter.prepare_latents(3, torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 411, 999])
    assert torch.allclose(adapter.add_noise(x0, noise, t), scheduler.add_noise(x0, noise, t), atol=1e-6)
    expected = noise if adapter.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    assert adapter.prediction_type == {"sd15": "epsilon", "sd2": "v_prediction", "cogvideox": "v_prediction"}[kind]
    assert torch.allclose(adapter.training_target(x0, noise, t), expected, atol=1e-6)
    with pytest.raises(AdapterError, match="shape"):
        adapter.add_noise(x0, noise[:2], t)
    with pytest.raises(AdapterError, match="timestep"):
        adapter.add_noise(x0, noise, t[:2])


def test_sample_training_timesteps_are_uniform_integers_and_seeded(tiny_model):
    adapter = _adapter(tiny_model, "sd15")
    draw = adapter.sample_training_timesteps(4000, torch.Generator().manual_seed(0))
    assert draw.dtype == torch.int64 and draw.min() >= 0 and draw.max() < 1000
    assert 400 < draw.float().mean() < 600
    assert torch.equal(draw, adapter.sample_training_timesteps(4000, torch.Generator().manual_seed(0)))
    per_sample = adapter.sample_training_timesteps(2, [torch.Generator().manual_seed(i) for i in range(2)])
    assert per_sample.shape == (2,)
    with pytest.raises(AdapterError, match="generators"):
        adapter.sample_training_timesteps(3, [torch.Generator()])


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("kind", VP_KINDS)
def test_recorded_log_prob_is_the_ddim_density_from_the_formula(tiny_model, kind, reduce):
    adapter = _adapter(tiny_model, kind)
    steps, guidance = 4, 3.0
    rollout = adapter.sample(PROMPTS, steps, guidance, generator=torch.Generator().manual_seed(0), stochastic=True,
                             eta=1.0, log_prob_reduce=reduce, decode=False)
    alphas = adapter.scheduler.alphas_cumprod.double()
    final = torch.as_tensor(adapter.scheduler.final_alpha_cumprod).double()
    with torch.no_grad():
        for i, t in enumerate(rollout.timesteps.tolist()):
            x, y = rollout.latents[:, i].double(), rollout.latents[:, i + 1].double()
            out = adapter.predict(rollout.latents[:, i], t, rollout.conditioning, guidance).double()
            prev = t - 1000 // steps
            a_t, a_prev = alphas[t], alphas[prev] if prev >= 0 else final
            if adapter.prediction_type == "epsilon":
                eps = out
                x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            else:
                x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
                eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
            sigma = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
            if sigma == 0:  # CogVideoX's last step lands on ᾱ = 1: deterministic, log-prob 0
                assert torch.allclose(y, mean, atol=1e-5) and (rollout.log_probs[:, i] == 0).all()
                continue
            density = (-((y - mean) ** 2) / (2 * sigma**2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).flatten(1)
            expected = density.mean(1) if reduce == "mean" else density.sum(1)
            assert torch.allclose(rollout.log_probs[:, i].double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["sd15", "sd2"])
def test_stochastic_ddim_sampling_matches_the_pipeline_with_eta(tiny_model, kind):
    adapter = _adapter(tiny_model, kind)
    rollout = adapter.sample(PROMPTS, 4, 2.0, generator=torch.Generator().manual_seed(7), stochastic=True, eta=1.0)
    out = adapter.pipe(PROMPTS, num_inference_steps=4, guidance_scale=2.0, eta=1.0, output_type="pt",
                       generator=torch.Generator().manual_seed(7)).images
    assert (rollout.media - out).abs().max().item() <= 1e-4


def test_clip_sample_config_is_followed(tiny_model):
    from diffusers import DDIMScheduler

    adapter = _adapter(tiny_model, "sd2")
    adapter.pipe.scheduler = DDIMScheduler.from_config(adapter.scheduler.config, clip_sample=True, clip_sample_range=0.5)
    rollout = adapter.sample(PROMPTS, 4, 1.0, generator=torch.Generator().manual_seed(1))
    assert (rollout.media - _pipeline_media(adapter.pipe, rollout, 1.0, seed=1)).abs().max().item() <= 1e-4


def test_sdxl_micro_conditioning_follows_the_output_size(tiny_model):
    adapter = _adapter(tiny_model, "sdxl")
    rollout = adapter.sample(PROMPTS, 3, 3.0, generator=torch.Generator().manual_seed(2), height=24, width=32)
    assert rollout.media.shape == (2, 3, 24, 32)
    assert (rollout.media - _pipeline_media(adapter.pipe, rollout, 3.0, seed=2)).abs().max().item() <= 1e-4


def test_other_schedulers_are_swapped_for_ddim_and_thresholding_is_refused(tiny_model):
    from diffusers import DDIMScheduler, DiffusionPipeline, EulerDiscreteScheduler

    pipe = DiffusionPipeline.from_pretrained(tiny_model("sd15"))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    adapter = load(pipe)
    assert type(adapter.scheduler) is DDIMScheduler and adapter.scheduler.config.steps_offset == 1
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, thresholding=True)
    with pytest.raises(AdapterError, match="thresholding"):
        load(pipe)


@pytest.mark.parametrize("kind", ["sd15", "sd2"])
def test_image_latent_and_media_shape_errors(tiny_model, kind):
    adapter = _adapter(tiny_model, kind)
    with pytest.raises(AdapterError, match="num_frames"):
        adapter.prepare_latents(1, num_frames=5)
    with pytest.raises(AdapterError, match="divisible"):
        adapter.prepare_latents(1, height=15, width=16)
    with pytest.raises(AdapterError, match="latents must be"):
        adapter.sample(PROMPTS[:1], 2, latents=torch.randn(1, 3, 8, 8))
    with pytest.raises(AdapterError, match="media must be images"):
        adapter.encode(torch.rand(1, 1, 16, 16))
    with pytest.raises(AdapterError, match="unknown sampling options"):
        adapter.sample(PROMPTS[:1], 2, shift=3.0)


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "cogvideox"])
def test_encode_decode_shapes_and_determinism(tiny_model, kind):
    adapter = _adapter(tiny_model, kind)
    latents = adapter.prepare_latents(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        media = adapter.decode(latents)
        again = adapter.encode(media)
        assert torch.equal(again, adapter.encode(media))  # posterior mean without a generator
        sampled = adapter.encode(media, torch.Generator().manual_seed(0))
    assert again.shape == latents.shape and sampled.shape == latents.shape and not torch.equal(sampled, again)
    assert media.ndim == (5 if adapter.modality == "video" else 4) and 0 <= media.min() <= media.max() <= 1
    if kind == "cogvideox":
        with pytest.raises(AdapterError, match="videos"):
            adapter.encode(media[:, 0])


# relative L2 reconstruction error allowed after 30-step inversion + 30-step sampling; CogVideoX's
# zero-terminal-SNR schedule makes the first step (ᾱ = 0) the least accurate one to invert
INVERSION_TOLERANCE = {"sd15": 0.05, "sd2": 0.05, "cogvideox": 0.1}


@pytest.mark.parametrize("kind", ["sd15", "sd2", "cogvideox"])
def test_ddim_inversion_reconstructs_and_renoise_is_not_worse(tiny_model, kind):
    """Invert the result of a deterministic 30-step sample, sample again from the inverted noise."""
    adapter = _adapter(tiny_model, kind)
    steps, prompts = 30, PROMPTS[:1]
    conditioning = adapter.encode_prompts(prompts, do_cfg=False)
    x0 = adapter.sample(prompts, steps, 1.0, generator=torch.Generator().manual_seed(0), conditioning=conditioning,
                        decode=False).final_latents

    def reconstruction_error(renoise_iterations: int) -> float:
        inverted = adapter.invert(x0, conditioning, steps=steps, renoise_iterations=renoise_iterations)
        assert inverted.latents.shape == (1, steps + 1, *x0.shape[1:]) and torch.equal(inverted.latents[:, -1], x0)
        assert inverted.sampler["inversion"] == ("renoise" if renoise_iterations else "ddim")
        rebuilt = adapter.sample(prompts, steps, 1.0, latents=inverted.latents[:, 0], conditioning=conditioning,
                                 decode=False).final_latents
        return ((rebuilt - x0).norm() / x0.norm()).item()

    ddim_error = reconstruction_error(0)
    renoise_error = reconstruction_error(1)
    # a random starting point lands far away: the tolerance below is meaningful
    unrelated = adapter.sample(prompts, steps, 1.0, generator=torch.Generator().manual_seed(9),
                               conditioning=conditioning, decode=False).final_latents
    assert ((unrelated - x0).norm() / x0.norm()).item() > 0.3
    assert ddim_error < INVERSION_TOLERANCE[kind], ddim_error
    assert renoise_error <= ddim_error * 1.05 + 1e-4, (renoise_error, ddim_error)


def test_partial_inversion_stops_at_the_requested_step(tiny_model):
    adapter = _adapter(tiny_model, "sd15")
    conditioning = adapter.encode_prompts(PROMPTS, do_cfg=False)
    x0 = adapter.prepare_latents(2, torch.Generator().manual_seed(0))
    full = adapter.invert(x0, conditioning, steps=10)
    part = adapter.invert(x0, conditioning, steps=10, until_step=6)
    assert part.num_steps == 4 and torch.equal(part.timesteps, full.timesteps[6:])
    assert torch.allclose(part.latents, full.latents[:, 6:], atol=1e-6)
    with pytest.raises(AdapterError, match="until_step"):
        adapter.invert(x0, conditioning, steps=10, until_step=10)
    with pytest.raises(AdapterError, match="renoise_iterations"):
        adapter.invert(x0, conditioning, steps=10, renoise_iterations=-1)
    with pytest.raises(AdapterError, match="conditioning batch"):
        adapter.invert(x0[:1], conditioning, steps=10)


def test_an_auxiliary_lora_adapter_is_frozen_and_leaves_the_trained_one_active(tiny_model):
    adapter = _adapter(tiny_model, "sd15")
    adapter.add_lora(rank=2)
    adapter.add_lora(rank=2, adapter_name="ema")
    denoiser = adapter.trainable_denoiser
    assert list(denoiser.active_adapters()) == ["default"]
    trainable = [name for name, p in denoiser.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in name for name in trainable)
    assert any(".ema." in name for name, _ in denoiser.named_parameters())
