"""The shipped text-to-video model shapes-video: stock loading, diffalign loading, size, its autoencoder, prompt following."""
from __future__ import annotations

import pytest
import torch

from diffalign.assets_path import asset_path
from diffalign.shapes import motion, video_judge
from diffalign.shapes import video_model as V
from diffalign.shapes.models import folder_size, read_defaults


def _folder():
    folder = asset_path("models", V.SHIPPED_NAME)
    if not (folder / "model_index.json").exists():
        pytest.skip(f"{V.SHIPPED_NAME} is not in assets/models (run python -m diffalign.shapes.pretrain_video)")
    return folder


def _stock_pipeline():
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(_folder()))
    pipe.set_progress_bar_config(disable=True)
    return pipe, read_defaults(_folder())


def test_shipped_video_model_is_a_small_stock_pipeline():
    assert folder_size(_folder()) < 20e6
    pipe, defaults = _stock_pipeline()
    assert type(pipe).__name__ == "WanPipeline"
    assert (defaults["num_frames"], defaults["height"], defaults["width"]) == (V.VIDEO_FRAMES, 32, 32)
    frames = pipe(["a red circle moving to the right", "a still blue square"], output_type="pt",
                  generator=torch.Generator().manual_seed(0), **{**V.stock_call_kwargs(defaults), "num_inference_steps": 3}).frames
    assert frames.shape == (2, V.VIDEO_FRAMES, 3, 32, 32)
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1


def test_shipped_video_model_loads_through_diffalign_and_matches_the_stock_pipeline():
    from diffalign import pipelines

    _folder()
    adapter = pipelines.load(V.SHIPPED_NAME)
    assert adapter.family == "wan" and adapter.max_sequence_length == V.TEXT_TOKENS
    pipe, defaults = _stock_pipeline()
    prompts = ["a green triangle moving up"]
    rollout = adapter.sample(prompts, steps=4, guidance_scale=defaults["guidance_scale"], generator=torch.Generator().manual_seed(0),
                             height=32, width=32, num_frames=V.VIDEO_FRAMES)
    stock = pipe(prompts, output_type="pt", generator=torch.Generator().manual_seed(0), **{**V.stock_call_kwargs(defaults), "num_inference_steps": 4}).frames
    assert rollout.media.shape == stock.shape
    assert torch.allclose(rollout.media, stock, atol=2e-3), (rollout.media - stock).abs().max()


def test_shipped_video_autoencoder_reconstructions_pass_the_judge():
    """The autoencoder bounds what the model can reach: its reconstructions of ground truth must pass."""
    pipe, _ = _stock_pipeline()
    samples = [motion.make_video_sample(i, seed=321, frames=V.VIDEO_FRAMES) for i in range(60)]
    videos = torch.stack([s.video for s in samples])
    with torch.no_grad():
        latents = pipe.vae.encode(videos.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mode()
        reconstructed = ((pipe.vae.decode(latents).sample + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)
    verdicts = video_judge.judge_videos(reconstructed, [s.metadata for s in samples])
    passed = sum(v.correct for v in verdicts) / len(verdicts)
    print("shapes-video reconstructions judged correct:", round(passed, 3))
    assert passed >= 0.9


@pytest.mark.slow
def test_shipped_video_model_follows_prompts_better_than_chance():
    """Judged against their own prompts, videos must beat the same videos judged against another prompt of their task."""
    pipe, defaults = _stock_pipeline()
    prompts = motion.sample_motion_prompts(16, seed=123, tasks=("colored_motion", "still"))
    videos = pipe(prompts, output_type="pt", generator=torch.Generator().manual_seed(0), **V.stock_call_kwargs(defaults)).frames
    own = sum(v.correct for v in video_judge.judge_videos(videos, prompts))
    by_task: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_task.setdefault(motion.parse_motion_caption(p)["tag"], []).append(i)
    mismatched = list(prompts)
    for indices in by_task.values():
        for a, b in zip(indices, indices[1:] + indices[:1]):
            mismatched[a] = prompts[b]
    other = sum(v.correct for v in video_judge.judge_videos(videos, mismatched))
    assert own > other + 2, (own, other)


def test_sampling_defaults_are_read_beside_the_model_without_deprecated_pipeline_attributes():
    import warnings

    from diffalign import pipelines
    from diffalign.sample import model_defaults

    adapter = pipelines.load(str(_folder()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # diffusers deprecates pipe._name_or_path
        assert model_defaults(adapter) == read_defaults(_folder())
