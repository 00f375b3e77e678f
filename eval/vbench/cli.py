"""``diffalign eval vbench --videos DIR | --model M [--dimensions ...]``: VBench's arguments and run."""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from .suite import VIDEOS_PER_PROMPT

DEFAULT_STEPS, DEFAULT_GUIDANCE = 50, 6.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The VBench-only options of ``diffalign eval``."""
    group = parser.add_argument_group("vbench")
    group.add_argument("--videos", type=Path, default=None, help="vbench: score this folder of {prompt}-{index}.mp4 videos (instead of --model)")
    group.add_argument("--dimensions", default=None, help="vbench: comma-separated dimension names (default: all 16)")
    group.add_argument("--videos-per-prompt", type=int, default=VIDEOS_PER_PROMPT, help="vbench: videos per prompt (default 5, the official protocol)")
    group.add_argument("--fps", type=int, default=8, help="vbench: frame rate of the generated mp4 files")
    group.add_argument("--height", type=int, default=None, help="vbench: video height to sample (default: the model's)")
    group.add_argument("--width", type=int, default=None, help="vbench: video width to sample (default: the model's)")
    group.add_argument("--num-frames", type=int, default=None, help="vbench: frames per video to sample (default: the model's)")
    group.add_argument("--max-prompts", type=int, default=None, help="vbench: quick run, only the first N prompts of each chosen dimension")
    group.add_argument("--vbench-prompts", type=Path, default=None, help="vbench: a VBench full_info JSON (default: the shipped official one)")
    group.add_argument("--dino", default=None, help="vbench: DINO ViT-B/16 transformers folder or hub id (default facebook/dino-vitb16)")
    group.add_argument("--clip-b32", default=None, help="vbench: CLIP ViT-B/32 folder or hub id (default openai/clip-vit-base-patch32)")
    group.add_argument("--clip-l14", default=None, help="vbench: CLIP ViT-L/14 for aesthetic quality (default openai/clip-vit-large-patch14)")
    group.add_argument("--aesthetic-head", default=None, help="vbench: sa_0_4_vit_l_14_linear.pth (default: in $VBENCH_CACHE_DIR)")
    group.add_argument("--raft-weights", default=None, help="vbench: torchvision raft_large_C_T_V1-22a6c225.pth (default: the torch hub cache)")
    group.add_argument("--musiq-weights", default=None, help="vbench: pyiqa musiq_spaq_ckpt-358bb6af.pth (default: in $VBENCH_CACHE_DIR)")
    group.add_argument("--imaging-mode", default="longer", choices=("longer", "shorter", "shorter_centercrop", "None"), help="vbench: imaging-quality resize mode")


def _fail(message: str) -> int:
    print(f"diffalign eval: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from diffalign.media import MediaError

    from .dimensions import ModelOptions
    from .runner import check_dimensions, evaluate_videos, generate_videos
    from .suite import VBenchError, first_prompts, load_suite

    if (args.videos is None) == (args.model is None and args.run is None):
        return _fail("vbench needs exactly one of --videos DIR or --model NAME / --run RUN_DIR")
    for flag in ("videos_per_prompt", "max_prompts", "height", "width", "num_frames"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            return _fail(f"--{flag.replace('_', '-')} must be positive, got {value}")
    source = args.model or (Path(args.run).name if args.run else args.videos.name)
    out = args.out or Path("runs") / f"eval-vbench-{re.sub(r'[^A-Za-z0-9._-]+', '_', str(source))}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (Path(out) / "results.jsonl").exists() and not args.resume:
        return _fail(f"{Path(out) / 'results.jsonl'} exists: pass --resume to continue that run, or choose another folder")
    try:
        dimensions = check_dimensions([d.strip() for d in args.dimensions.split(",") if d.strip()] if args.dimensions else None)
        full_suite = load_suite(args.vbench_prompts)
        suite = first_prompts(full_suite, dimensions, args.max_prompts)
        options = ModelOptions(device=args.device, imaging_mode=args.imaging_mode, aesthetic_head=args.aesthetic_head,
                               raft_weights=args.raft_weights, musiq_weights=args.musiq_weights,
                               # the GenEval options (--detector, --clip-model, --clip-pretrained) also pick VBench's stand-in
                               detector_model=getattr(args, "detector", None), color_model=getattr(args, "clip_model", None),
                               color_pretrained=getattr(args, "clip_pretrained", None))
        for field, value in (("dino", args.dino), ("clip_b32", args.clip_b32), ("clip_l14", args.clip_l14)):
            if value is not None:
                setattr(options, field, value)
        videos = args.videos
        if videos is None:
            from ..cli import load_sampler

            try:
                sampler = load_sampler(args)
            except (OSError, ValueError) as err:
                return _fail(f"cannot load model {source!r}: {err}")
            videos = generate_videos(
                sampler, Path(out) / "videos", dimensions, full_suite, args.videos_per_prompt, max_prompts=args.max_prompts,
                steps=args.steps or DEFAULT_STEPS, guidance_scale=args.guidance_scale or DEFAULT_GUIDANCE,
                seed=args.seed, batch_size=args.batch_size, fps=args.fps, progress=not args.no_progress,
                sample_kwargs={k: getattr(args, k) for k in ("height", "width", "num_frames") if getattr(args, k) is not None},
            )
        summary = evaluate_videos(videos, out, dimensions, options, suite, args.videos_per_prompt,
                                  resume=args.resume, progress=not args.no_progress)
    except (VBenchError, MediaError) as err:
        return _fail(str(err))
    print((Path(out) / "summary.md").read_text())
    print(f"results in {out}")
    return 0 if summary else 1
