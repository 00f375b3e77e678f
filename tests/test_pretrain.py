"""The ShapesWorld pretraining command: tiny end-to-end runs, loss decrease, exact resume."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from diffalign.shapes import models as M
from diffalign.shapes import pretrain as P

TINY_ARGS = ["--tiny", "--dataset-size", "48", "--batch-size", "4", "--autoencoder-steps", "3", "--steps", "4", "--flow-steps", "4", "--checkpoint-every", "2"]


def _tiny_config(out, **overrides) -> P.PretrainConfig:
    values = dict(out=str(out), sizes=M.TINY_SIZES, dataset_size=48, batch_size=4, autoencoder_steps=3, steps=4, flow_steps=4, checkpoint_every=2)
    values.update(overrides)
    return P.PretrainConfig(**values)


def test_tiny_run_writes_stock_pipelines(tmp_path):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline

    assert P.main([*TINY_ARGS, "--model", "all", "--out", str(tmp_path)]) == 0
    sd = StableDiffusionPipeline.from_pretrained(str(tmp_path / "shapes-sd"))
    flow = StableDiffusion3Pipeline.from_pretrained(str(tmp_path / "shapes-flow"), text_encoder_3=None, tokenizer_3=None)
    assert M.null_component_kwargs(tmp_path / "shapes-flow") == {
        "feature_extractor": None, "image_encoder": None, "text_encoder_3": None, "tokenizer_3": None}
    assert isinstance(sd.scheduler, DDIMScheduler) and isinstance(flow.scheduler, FlowMatchEulerDiscreteScheduler)
    assert flow.text_encoder_3 is None and sd.safety_checker is None
    for pipe, folder in ((sd, "shapes-sd"), (flow, "shapes-flow")):
        defaults = M.read_defaults(tmp_path / folder)
        assert defaults["height"] == M.TINY_SIZES.image_size
        pipe.set_progress_bar_config(disable=True)
        out = pipe("a photo of a red circle", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0),
                   **{k: v for k, v in defaults.items() if k != "num_inference_steps"})
        assert out.images.shape == (1, 3, M.TINY_SIZES.image_size, M.TINY_SIZES.image_size)
        assert torch.isfinite(out.images).all()
        # float16 on disk, float32 in memory
        tensors = load_file(str(tmp_path / folder / "vae" / "diffusion_pytorch_model.safetensors"))
        assert all(t.dtype == torch.float16 for t in tensors.values())
        assert pipe.vae.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    # the flow model's autoencoder is shifted and scaled to unit statistics, the SD one only scaled
    stats = json.loads((tmp_path / "autoencoder" / "latent_stats.json").read_text())
    assert flow.vae.config.shift_factor == pytest.approx(stats["mean"]) and sd.vae.config.shift_factor is None
    assert sd.vae.config.scaling_factor == pytest.approx(1 / stats["rms"])


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the pretraining command runs: tiny ops on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", M.MODEL_KINDS)
def test_loss_decreases_on_a_fixed_batch(tmp_path, kind, one_thread):
    config = _tiny_config(tmp_path, lr=3e-3, warmup_steps=1)
    images, captions = P.make_data(config)
    P._check_config(config, resume=False)
    P.train_stage(P.AutoencoderStage(config, torch.device("cpu"), images), config, resume=False, budget=[None], log=lambda _: None)
    stage = P.DenoiserStage(kind, config, torch.device("cpu"), images, captions)
    batch = stage.sample_batch(torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(stage.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = stage.loss_on(batch, torch.Generator().manual_seed(2))  # same noise and timesteps every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def _checkpoint_tensors(out, stage):
    state = torch.load(P.checkpoint_path(P.PretrainConfig(out=str(out)), stage), weights_only=True)
    return state["step"], {f"{m}.{k}": v for m, sd in state["modules"].items() for k, v in sd.items()}


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    args = [*TINY_ARGS, "--model", "sd", "--steps", "6"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert P.main([*args, "--out", str(whole)]) == 0
    # interrupted inside the denoiser stage: 3 autoencoder steps + 2 of the 6 SD steps
    assert P.main([*args, "--out", str(parts), "--stop-after", "5"]) == 0
    step, _ = _checkpoint_tensors(parts, "sd")
    assert step == 2 and not (parts / "shapes-sd").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        P.pretrain(P.config_from_args(P.build_parser().parse_args([*args, "--out", str(parts)])))
    assert P.main([*args, "--out", str(parts), "--resume"]) == 0
    for stage in ("autoencoder", "sd"):
        step_a, a = _checkpoint_tensors(whole, stage)
        step_b, b = _checkpoint_tensors(parts, stage)
        assert step_a == step_b and a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    for sub in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(whole / "shapes-sd" / sub)), load_file(str(parts / "shapes-sd" / sub))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_settings(tmp_path):
    assert P.main([*TINY_ARGS, "--model", "sd", "--out", str(tmp_path), "--stop-after", "1"]) == 0
    with pytest.raises(ValueError, match="steps"):
        P.pretrain(_tiny_config(tmp_path, models=("sd",), steps=9), resume=True)


def test_repeated_token_attention_equals_stock_attention_over_the_zero_t5_tokens():
    """Training feeds one zero T5 token with log(256) attention bias; sampling feeds 256 zero tokens."""
    sizes = replace(M.TINY_SIZES, text_hidden=8)
    torch.manual_seed(0)
    transformer = M.build_transformer(sizes).eval()
    for parameter in transformer.parameters():  # diffusers zero-inits the AdaLN gates: make every path live
        parameter.data.normal_(0, 0.1)
    n = M.flow_t5_length()
    width = transformer.config.joint_attention_dim
    clip = torch.randn(2, 77, width)
    x = torch.randn(2, sizes.latent_channels, sizes.latent_size, sizes.latent_size)
    pooled, t = torch.randn(2, transformer.config.pooled_projection_dim), torch.tensor([900.0, 30.0])
    with torch.no_grad():
        stock = transformer(x, torch.cat([clip, torch.zeros(2, n, width)], 1), pooled, t).sample
        transformer.set_attn_processor(M.RepeatedTokenJointAttnProcessor(n))
        compressed = transformer(x, torch.cat([clip, torch.zeros(2, 1, width)], 1), pooled, t).sample
        without_bias = M.RepeatedTokenJointAttnProcessor(1)
        transformer.set_attn_processor(without_bias)
        unbiased = transformer(x, torch.cat([clip, torch.zeros(2, 1, width)], 1), pooled, t).sample
    torch.testing.assert_close(compressed, stock, rtol=1e-4, atol=1e-5)
    assert (unbiased - stock).abs().max() > 1e-3  # the bias is what makes them equal


def test_bad_model_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        P.PretrainConfig(out=str(tmp_path), models=("sdxl",))


def test_parallel_model_processes_match_the_sequential_run(tmp_path):
    if not P._parallel_ok(_tiny_config(tmp_path), M.MODEL_KINDS):
        pytest.skip("needs two CPU cores")
    assert P.main([*TINY_ARGS, "--model", "all", "--out", str(tmp_path / "parallel")]) == 0
    assert P.main([*TINY_ARGS, "--model", "all", "--out", str(tmp_path / "sequential"), "--sequential"]) == 0
    for weights in ("shapes-sd/unet/diffusion_pytorch_model.safetensors", "shapes-sd/text_encoder/model.safetensors",
                    "shapes-flow/transformer/diffusion_pytorch_model.safetensors"):
        a, b = (load_file(str(tmp_path / run / weights)) for run in ("parallel", "sequential"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights
