"""The video judge on rendered ground truth and on wrong captions, per task and per kind of error.

Each clip is judged against its own caption (must be correct) and against the false captions of
:func:`diffalign.shapes.motion.wrong_captions` (wrong direction, colour, shape, moving vs still:
must be rejected). Run::

    python bench/video_judge_accuracy.py --clips 3000 --frames 8 --seed 7
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from diffalign.shapes import motion, video_judge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3000)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    samples = motion.generate_video_dataset(args.clips, seed=args.seed, frames=args.frames)
    detections = video_judge.detect_videos(torch.stack([s.video for s in samples]))
    right, total, rejected, wrong = Counter(), Counter(), Counter(), Counter()
    for index, (sample, dets) in enumerate(zip(samples, detections)):
        tracks = video_judge.track(dets, sample.video.shape[-1])
        tag = sample.metadata["tag"]
        total[tag] += 1
        right[tag] += video_judge.video_verdict(dets, sample.metadata, sample.video.shape[-1], tracks).correct
        for kind, caption in motion.wrong_captions(sample.scene, index).items():
            wrong[kind] += 1
            rejected[kind] += not video_judge.video_verdict(dets, caption, sample.video.shape[-1], tracks).correct
    print(f"{args.clips} clips of {args.frames} frames, seed {args.seed} ({time.perf_counter() - started:.0f} s)")
    for tag in total:
        print(f"  ground truth {tag:<17} {right[tag]}/{total[tag]} correct")
    print(f"  ground truth overall          {sum(right.values())}/{sum(total.values())} correct")
    for kind in wrong:
        print(f"  wrong {kind:<10} caption      {rejected[kind]}/{wrong[kind]} rejected")
    print(f"  wrong captions overall        {sum(rejected.values())}/{sum(wrong.values())} rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
