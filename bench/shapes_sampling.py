"""Sampling time of the shipped ShapesWorld models at their default settings (16 images, 8 videos).

Times the stock diffusers pipeline (``StableDiffusionPipeline`` / ``StableDiffusion3Pipeline``
loaded without diffalign) and diffalign's adapter on the same prompts, median of ``--repeats``::

    python bench/shapes_sampling.py --threads 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from _timing import median_seconds  # bench/ is on sys.path when run as a script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import diffusers

    from diffalign.pipelines import load, shipped_model_path
    from diffalign.shapes import models as M
    from diffalign.shapes.world import sample_prompts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--videos", type=int, default=8, help="videos of shapes-video (0: skip it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prompts = [m["prompt"] for m in sample_prompts(args.images, seed=0)]
    classes = {"sd": diffusers.StableDiffusionPipeline, "flow": diffusers.StableDiffusion3Pipeline}
    print(f"| model | steps | guidance | stock pipeline, {args.images} images (s) | diffalign adapter (s) |")
    print("|---|---|---|---|---|")
    for kind, name in M.SHIPPED_NAMES.items():
        folder = shipped_model_path(name)
        if folder is None:
            print(f"| {name} | not shipped | | | |")
            continue
        defaults = M.read_defaults(folder)
        pipe = classes[kind].from_pretrained(str(folder), **M.null_component_kwargs(folder))
        pipe.set_progress_bar_config(disable=True)
        stock = median_seconds(lambda: pipe(prompts, generator=torch.Generator().manual_seed(0), **defaults), args.repeats)
        adapter = load(name)
        sample_kwargs = {"steps": defaults["num_inference_steps"], "guidance_scale": defaults["guidance_scale"]}
        ours = median_seconds(lambda: adapter.sample(prompts, generator=torch.Generator().manual_seed(0), log_probs=False,
                                                      **sample_kwargs), args.repeats)
        print(f"| {name} | {defaults['num_inference_steps']} | {defaults['guidance_scale']} | {stock:.2f} | {ours:.2f} |")
    if args.videos:
        time_shapes_video(args.videos, args.repeats)
    return 0


def time_shapes_video(videos: int, repeats: int) -> None:
    """The same two timings for ``shapes-video`` (``WanPipeline``), ``videos`` clips at its defaults."""
    import diffusers

    from diffalign.pipelines import load, shipped_model_path
    from diffalign.shapes import video_model as V
    from diffalign.shapes.models import read_defaults
    from diffalign.shapes.motion import sample_motion_prompts

    folder = shipped_model_path(V.SHIPPED_NAME)
    if folder is None:
        print(f"| {V.SHIPPED_NAME} | not shipped | | | |")
        return
    defaults = read_defaults(folder)
    call = V.stock_call_kwargs(defaults)
    prompts = sample_motion_prompts(videos, seed=0)
    pipe = diffusers.WanPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    stock = median_seconds(lambda: pipe(prompts, output_type="pt", generator=torch.Generator().manual_seed(0), **call), repeats)
    adapter = load(V.SHIPPED_NAME)
    ours = median_seconds(lambda: adapter.sample(
        prompts, steps=defaults["num_inference_steps"], guidance_scale=defaults["guidance_scale"], log_probs=False,
        generator=torch.Generator().manual_seed(0), height=defaults["height"], width=defaults["width"],
        num_frames=defaults["num_frames"], keep_latents="final"), repeats)
    print(f"| {V.SHIPPED_NAME} ({videos} videos) | {defaults['num_inference_steps']} | {defaults['guidance_scale']} | {stock:.2f} | {ours:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
