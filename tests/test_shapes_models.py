"""The shipped ShapesWorld default models: stock loading, diffalign loading, size, prompt following."""
from __future__ import annotations

import pytest
import torch

from diffalign.assets_path import asset_path
from diffalign.shapes import judge, world
from diffalign.shapes import models as M

PIPELINE_CLASSES = {"sd": "StableDiffusionPipeline", "flow": "StableDiffusion3Pipeline"}


def _folder(kind: str):
    folder = asset_path("models", M.SHIPPED_NAMES[kind])
    if not (folder / "model_index.json").exists():
        pytest.skip(f"{M.SHIPPED_NAMES[kind]} is not in assets/models (run python -m diffalign.shapes.pretrain)")
    return folder


def _stock_pipeline(kind: str):
    import diffusers

    folder = _folder(kind)
    pipe = getattr(diffusers, PIPELINE_CLASSES[kind]).from_pretrained(str(folder), **M.null_component_kwargs(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe, M.read_defaults(folder)


@pytest.mark.parametrize("kind", M.MODEL_KINDS)
def test_shipped_model_is_a_small_stock_pipeline(kind):
    folder = _folder(kind)
    assert M.folder_size(folder) < 20e6
    pipe, defaults = _stock_pipeline(kind)
    assert type(pipe).__name__ == PIPELINE_CLASSES[kind]
    assert defaults["height"] == defaults["width"] == world.IMAGE_SIZE
    # pipeline defaults (no size given) already produce ShapesWorld-sized images
    out = pipe(["a photo of a red circle", "a photo of two squares"], num_inference_steps=3, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)
    assert torch.isfinite(out.images).all() and out.images.min() >= 0 and out.images.max() <= 1


@pytest.mark.parametrize("kind", M.MODEL_KINDS)
def test_shipped_model_loads_through_diffalign(kind):
    from diffalign import pipelines

    if PIPELINE_CLASSES[kind] not in pipelines.ADAPTERS.names():
        pytest.skip(f"no diffalign adapter for {PIPELINE_CLASSES[kind]} yet")
    _folder(kind)
    adapter = pipelines.load(M.SHIPPED_NAMES[kind])
    defaults = M.read_defaults(_folder(kind))
    rollout = adapter.sample(["a photo of a blue square"] * 2, steps=4, guidance_scale=defaults["guidance_scale"],
                             generator=torch.Generator().manual_seed(0), height=defaults["height"], width=defaults["width"])
    assert rollout.media.shape == (2, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)


@pytest.mark.slow
@pytest.mark.parametrize("kind", M.MODEL_KINDS)
def test_shipped_model_follows_prompts_better_than_chance(kind):
    """Judged against their own prompts, images must beat the same images judged against other
    prompts of the same task (what a model ignoring the text would score)."""
    pipe, defaults = _stock_pipeline(kind)
    prompts = [m["prompt"] for m in world.sample_prompts(16, seed=123, tasks=("single_object", "colors"))]
    images = pipe(prompts, output_type="pt", generator=torch.Generator().manual_seed(0), **defaults).images
    own = sum(v.correct for v in judge.judge_batch(images, prompts))
    # a derangement within each task: every image gets another prompt of its own task
    by_task: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_task.setdefault(world.parse_caption(p)["tag"], []).append(i)
    mismatched = list(prompts)
    for indices in by_task.values():
        for a, b in zip(indices, indices[1:] + indices[:1]):
            mismatched[a] = prompts[b]
    other = sum(v.correct for v in judge.judge_batch(images, mismatched))
    assert own > other + 2, (own, other)


@pytest.mark.slow
@pytest.mark.parametrize("kind", M.MODEL_KINDS)
def test_shipped_model_is_good_but_imperfect_on_shapes_eval(tmp_path, kind):
    """A ShapesEval subset at the model's defaults: room for alignment above, clearly better than blank below."""
    from diffalign import pipelines
    from diffalign.eval.shapes_eval import run_shapes_eval

    defaults = M.read_defaults(_folder(kind))
    summary = run_shapes_eval(pipelines.load(M.SHIPPED_NAMES[kind]), tmp_path, images_per_prompt=2, seed=0,
                              steps=defaults["num_inference_steps"], guidance_scale=defaults["guidance_scale"],
                              max_prompts_per_task=6, progress=False, save_images=False)
    print(kind, {task: round(v["accuracy"], 3) for task, v in summary["tasks"].items()}, round(summary["overall"], 3))
    assert 0.15 < summary["overall"] < 0.85
    assert summary["tasks"]["colors"]["accuracy"] >= 0.4  # the task with most prompts in the subset


@pytest.mark.parametrize("kind", M.MODEL_KINDS)
def test_shipped_autoencoder_reconstructions_pass_the_judge(kind):
    """The autoencoder bounds what the model can reach: its reconstructions of ground truth must pass."""
    pipe, _ = _stock_pipeline(kind)
    samples = world.generate_dataset(120, seed=321)
    images = torch.stack([s.image for s in samples])
    with torch.no_grad():
        reconstructed = M.latents_to_image(kind, pipe.vae, M.image_to_latents(kind, pipe.vae, images)).clamp(0, 1)
    verdicts = judge.judge_batch(reconstructed, [s.metadata for s in samples])
    passed = sum(v.correct for v in verdicts) / len(verdicts)
    print(kind, "reconstructions judged correct:", round(passed, 3))
    assert passed >= 0.9
