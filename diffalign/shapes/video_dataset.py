"""``diffalign render-videos --out DIR``: write rendered ShapesWorld-in-motion clips and their captions.

The folder gets ``videos/NNNNN.mp4`` (or ``.gif``), ``captions.jsonl`` (one row per clip: ``file``,
``caption``, ``metadata``, ``frames``, ``fps``, ``seed``, ``index``) and ``frames.png``, a strip of
the frames of the first clips for quick viewing. Clip ``i`` of seed ``s`` is
:func:`diffalign.shapes.motion.make_video_sample` ``(i, s)``, so datasets are reproducible.
Also ``python -m diffalign.shapes.video_dataset``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from diffalign.errors import OutputExistsError, UserError, number
from diffalign.media import save_frame_strip, save_video

from . import motion

STRIP_CLIPS = 16  # clips shown in frames.png


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not hold a captions.jsonl)")
    parser.add_argument("--n", type=int, default=16, help="number of clips (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--frames", type=int, default=motion.DEFAULT_FRAMES,
                        help=f"frames per clip, {motion.FRAME_RANGE[0]} to {motion.FRAME_RANGE[1]} (default {motion.DEFAULT_FRAMES})")
    parser.add_argument("--size", type=int, default=motion.VIDEO_SIZE, help=f"frame side in pixels (default {motion.VIDEO_SIZE})")
    parser.add_argument("--fps", type=int, default=8, help="frames per second written in the files (default 8)")
    parser.add_argument("--format", choices=("mp4", "gif"), default="mp4", help="video file format (default mp4)")
    parser.add_argument("--tasks", default=",".join(motion.MOTION_TASKS),
                        help=f"comma-separated motion tasks, drawn uniformly (default: all of {', '.join(motion.MOTION_TASKS)})")


def write_video_dataset(out: str | Path, n: int = 16, seed: int = 0, frames: int = motion.DEFAULT_FRAMES, size: int = motion.VIDEO_SIZE,
                        fps: int = 8, video_format: str = "mp4", tasks: tuple[str, ...] | list[str] = motion.MOTION_TASKS) -> Path:
    """Write the dataset (see the module docstring) and return the path of ``captions.jsonl``."""
    number(n, "--n", low=1, integer=True)
    number(size, "--size", low=16, high=1024, integer=True)
    number(fps, "--fps", low=1, high=120, integer=True)
    number(seed, "--seed", integer=True)
    number(frames, "--frames", low=motion.FRAME_RANGE[0], high=motion.FRAME_RANGE[1], integer=True)
    if video_format not in ("mp4", "gif"):
        raise UserError(f"--format must be mp4 or gif, got {video_format!r}")
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise UserError("--tasks names no task")
    for task in tasks:
        if task not in motion.MOTION_TASKS:
            raise UserError(f"--tasks: unknown motion task {task!r}; tasks: {', '.join(motion.MOTION_TASKS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    captions = out / "captions.jsonl"
    if captions.exists():
        raise OutputExistsError(f"{captions} exists; choose another --out folder")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    strip: list[torch.Tensor] = []
    with captions.open("w") as handle:
        for sample_index, sample in enumerate(motion.iter_video_dataset(n, seed, frames, size, tasks)):
            name = f"videos/{sample_index:05d}.{video_format}"
            save_video(sample.video, out / name, fps=fps)
            if len(strip) < STRIP_CLIPS:
                strip.append(sample.video)
            row = {"file": name, "caption": sample.caption, "metadata": sample.metadata, "frames": frames, "fps": fps,
                   "seed": seed, "index": sample_index}
            handle.write(json.dumps(row) + "\n")
    save_frame_strip(torch.stack(strip), out / "frames.png", scale=max(1, 64 // size))
    return captions


def run(args: argparse.Namespace) -> int:
    captions = write_video_dataset(args.out, args.n, args.seed, args.frames, args.size, args.fps, args.format, args.tasks.split(","))
    print(f"wrote {args.n} clips and {captions}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffalign.shapes.video_dataset", description=__doc__.splitlines()[0])
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"diffalign render-videos: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
