"""``diffalign sample``: sample an image grid from any supported model (hub id, folder or shipped name),
with trained weights on it (``--lora DIR``, ``--run RUN_DIR [--checkpoint N]``; see :mod:`diffalign.trained`).

A video model writes one MP4 (or GIF, by ``--out``'s suffix) per sample, ``<out stem>_NNN.mp4`` beside ``--out``,
and a PNG strip of their frames (one row per video), ``<out stem>_frames.png``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from diffalign.errors import read_json


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines are skipped and reported, a file with no prompt is an error."""
    from diffalign.errors import UserError, existing_path, read_text

    path = existing_path(path, "prompt file", kind="file")
    lines = read_text(path, "prompt file").splitlines()
    prompts = [line.strip() for line in lines if line.strip()]
    skipped = len(lines) - len(prompts)
    if skipped:
        print(f"{path}: skipped {skipped} empty line(s)")
    if not prompts:
        raise UserError(f"{path}: no prompts (the file is empty or only blank lines)")
    return prompts


def model_defaults(adapter) -> dict:
    """Sampling defaults stored beside a shipped model (``diffalign_defaults.json``), if any."""
    # the pipeline's config first: the attribute of the same name is deprecated in diffusers (a FutureWarning)
    folder = getattr(getattr(adapter.pipe, "config", None), "_name_or_path", None) or getattr(adapter.pipe, "_name_or_path", None)
    if folder and (Path(folder) / "diffalign_defaults.json").exists():
        return read_json(Path(folder) / "diffalign_defaults.json", "the model's sampling defaults")
    return {}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from diffalign.trained import add_trained_model_arguments

    add_trained_model_arguments(parser, default_model="shapes-sd")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts", help="file with one prompt per line")
    parser.add_argument("--num-images", type=int, default=4, help="images per prompt")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-frames", type=int, help="video models: frames per video (default: the model's)")
    parser.add_argument("--fps", type=int, default=8, help="video models: frames per second of the MP4s")
    parser.add_argument("--height", type=int, help="sample height in pixels (default: the model's)")
    parser.add_argument("--width", type=int, help="sample width in pixels (default: the model's)")
    parser.add_argument("--out", default="samples.png",
                        help="output PNG grid; video models: .mp4/.gif names the videos (<stem>_NNN), .png their frame strip")


def check_arguments(args: argparse.Namespace) -> None:
    """Numbers in range, the output writable and the model there: a UserError before anything loads."""
    from diffalign.errors import MAX_STEPS, UserError, model_source, number

    number(args.num_images, "--num-images", low=1, integer=True)
    if args.steps is not None:
        number(args.steps, "--steps", low=1, high=MAX_STEPS, integer=True)
    if args.guidance_scale is not None:
        number(args.guidance_scale, "--guidance-scale", low=0)
    for option in ("num_frames", "height", "width"):
        if getattr(args, option, None) is not None:
            number(getattr(args, option), f"--{option.replace('_', '-')}", low=1, integer=True)
    number(getattr(args, "fps", 8), "--fps", low=1, integer=True)
    if any(not p.strip() for p in args.prompt):
        raise UserError("--prompt '': a prompt must not be empty")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a .png file name")
    if out.suffix.lower() not in (".png", ".mp4", ".gif"):
        raise UserError(f"--out {out}: expected a .png, .mp4 or .gif file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if args.model is not None:  # else the run's model.source, checked with the run
        model_source(args.model)


def run(args: argparse.Namespace) -> int:
    from diffalign.media import save_grid
    from diffalign.trained import load_from_args

    check_arguments(args)
    try:
        prompts = list(args.prompt)
        if args.prompts:
            prompts += read_prompts(args.prompts)
        if not prompts:
            prompts = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle left of a yellow circle"]
        adapter = load_from_args(args)
    except (OSError, ValueError) as err:  # missing files, a LoRA that does not fit, an unsupported model
        print(f"diffalign sample: {err}", file=sys.stderr)
        return 2
    defaults = model_defaults(adapter)
    steps = args.steps if args.steps is not None else defaults.get("num_inference_steps", 20)
    guidance = args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale", 1.0)
    expanded = [p for p in prompts for _ in range(args.num_images)]
    generator = torch.Generator(args.device).manual_seed(args.seed)
    start = time.perf_counter()
    size = {k: getattr(args, k, None) or defaults.get(k) for k in ("height", "width", "num_frames")}
    try:
        rollout = adapter.sample(expanded, steps=steps, guidance_scale=guidance, generator=generator, progress=True,
                                 keep_latents="final", **size)
    except ValueError as err:  # a size the model cannot take (AdapterError)
        print(f"diffalign sample: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    scale = max(1, 256 // rollout.media.shape[-1])
    if rollout.media.ndim == 5:
        paths = save_videos(rollout.media, Path(args.out), fps=getattr(args, "fps", 8), scale=scale)
        print(f"{len(expanded)} videos of {rollout.media.shape[1]} frames in {elapsed:.1f}s ({steps} steps, "
              f"guidance {guidance}) -> {paths[0].parent}/{Path(args.out).stem}_*")
        return 0
    path = save_grid(rollout.media, args.out, nrow=args.num_images, scale=scale)
    print(f"{len(expanded)} images in {elapsed:.1f}s ({steps} steps, guidance {guidance}) -> {path}")
    return 0


def save_videos(videos: torch.Tensor, out: Path, fps: int = 8, scale: int = 1) -> list[Path]:
    """``<out stem>_NNN.mp4`` (``.gif`` when ``out`` says so) per ``B×T×3×H×W`` video and ``<out stem>_frames.png``."""
    from diffalign.media import save_frame_strip, save_video

    suffix = out.suffix.lower() if out.suffix.lower() in (".mp4", ".gif") else ".mp4"
    paths = [save_video(video, out.with_name(f"{out.stem}_{index:03d}{suffix}"), fps=fps) for index, video in enumerate(videos)]
    paths.append(save_frame_strip(videos, out.with_name(f"{out.stem}_frames.png"), max_frames=16, scale=scale))
    return paths
