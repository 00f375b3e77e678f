"""The shapes-video pretraining command: a tiny end-to-end run, the tokenizer, loss decrease, exact resume."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from diffalign.shapes import motion
from diffalign.shapes import pretrain as P
from diffalign.shapes import pretrain_video as PV
from diffalign.shapes import video_model as V

TINY_ARGS = ["--tiny", "--dataset-size", "24", "--batch-size", "4", "--autoencoder-steps", "2", "--steps", "3", "--checkpoint-every", "2", "--threads", "1"]


def test_tokenizer_gives_every_caption_word_one_piece():
    tokenizer = V.build_t5_tokenizer()
    caption = "a red circle moving to the left and a still blue square"
    ids = tokenizer(caption).input_ids
    assert len(ids) == len(caption.split()) + 1 and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids
    longest = max(len(tokenizer(motion.make_video_sample(i, frames=9).caption).input_ids) for i in range(300))
    assert longest <= V.TEXT_TOKENS
    # an unknown word falls back to letters, never to <unk>
    assert tokenizer.unk_token_id not in tokenizer("a magenta hexagon").input_ids


def test_tiny_run_writes_a_stock_wan_pipeline(tmp_path):
    from diffusers import WanPipeline

    from diffalign import pipelines
    from diffalign.shapes.models import read_defaults

    assert PV.main([*TINY_ARGS, "--out", str(tmp_path)]) == 0
    folder = tmp_path / V.SHIPPED_NAME
    defaults = read_defaults(folder)
    assert defaults["num_frames"] == 9 and defaults["height"] == defaults["width"] == 32
    pipe = WanPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moving up", output_type="pt", generator=torch.Generator().manual_seed(0),
                  **{**V.stock_call_kwargs(defaults), "num_inference_steps": 2}).frames
    assert frames.shape == (1, 9, 3, 32, 32) and torch.isfinite(frames).all()
    tensors = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(t.dtype == torch.float16 for t in tensors.values())
    # the autoencoder's per-channel statistics, which WanPipeline reads, were measured on the data
    assert len(pipe.vae.config.latents_mean) == V.TINY_VIDEO_SIZES.latent_channels
    assert pipe.vae.config.latents_std != [1.0] * V.TINY_VIDEO_SIZES.latent_channels
    assert pipe.vae.config.scale_factor_spatial == 4 and pipe.vae.config.scale_factor_temporal == 4
    adapter = pipelines.load(str(folder))
    assert adapter.family == "wan" and adapter.max_sequence_length == V.TEXT_TOKENS
    rollout = adapter.sample(["a blue square moving down"], steps=2, guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
                             height=32, width=32, num_frames=9)
    assert rollout.media.shape == (1, 9, 3, 32, 32)


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = PV.VideoPretrainConfig(out=str(tmp_path), sizes=V.TINY_VIDEO_SIZES, dataset_size=16, autoencoder_steps=2, batch_size=4)
        clips, captions = PV.make_video_data(config)
        P._check_config(config, resume=False)
        P.train_stage(PV.VideoAutoencoderStage(config, torch.device("cpu"), clips), config, resume=False, budget=[None], log=lambda _: None)
        stage = PV.VideoDenoiserStage(config, torch.device("cpu"), clips, captions, log=lambda _: None)
        batch = stage.sample_batch(torch.Generator().manual_seed(1))
        optimizer = torch.optim.Adam(stage.parameters(), lr=3e-3)
        losses = []
        for _ in range(40):
            loss = stage.loss_on(batch, torch.Generator().manual_seed(2))  # same noise and sigmas every step
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0], losses
        # the text encoder learns too (conditioning is the pipeline's own encode_prompt, with gradients)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.modules["text_encoder"].parameters())
    finally:
        torch.set_num_threads(threads)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert PV.main([*TINY_ARGS, "--out", str(whole)]) == 0
    assert PV.main([*TINY_ARGS, "--out", str(parts), "--stop-after", "3"]) == 0  # 2 autoencoder steps + 1 transformer step
    assert not (parts / V.SHIPPED_NAME).exists()
    with pytest.raises(FileExistsError, match="--resume"):
        PV.pretrain_video(PV.config_from_args(PV.build_parser().parse_args([*TINY_ARGS, "--out", str(parts)])))
    assert PV.main([*TINY_ARGS, "--out", str(parts), "--resume"]) == 0
    for sub in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(whole / V.SHIPPED_NAME / sub)), load_file(str(parts / V.SHIPPED_NAME / sub))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="4k \\+ 1"):
        PV.VideoPretrainConfig(out=str(tmp_path), sizes=V.VideoModelSizes(frames=10))
    with pytest.raises(ValueError, match="steps"):
        PV.VideoPretrainConfig(out=str(tmp_path), steps=0)
    assert PV.main([*TINY_ARGS, "--out", str(tmp_path), "--stop-after", "1"]) == 0
    with pytest.raises(ValueError, match="steps"):
        PV.pretrain_video(PV.VideoPretrainConfig(out=str(tmp_path), sizes=V.TINY_VIDEO_SIZES, dataset_size=24, batch_size=4,
                                                 autoencoder_steps=2, steps=9, checkpoint_every=2), resume=True)
