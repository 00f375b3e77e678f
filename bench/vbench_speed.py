"""VBench videos scored per second on CPU, per dimension, with the tiny random models of the tests.

Builds the tests' tiny DINO, CLIP (224 px), LAION v1 head, a random torchvision ``raft_large`` and
(when pyiqa is installed) a tiny MUSIQ in a temporary folder, a colour-blob detector for the four
detector dimensions, and synthetic videos (a square moving over a grey scene), then times each
dimension on the same videos through the harness's own loaders and formulas. Model time dominates
on real weights; this measures the harness's overhead and the cost of VBench's preprocessing. Run::

    python bench/vbench_speed.py --videos 3 --frames 8 --size 128 --threads 1
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_video(frames: int, size: int, step: int) -> torch.Tensor:
    video = torch.full((frames, 3, size, size), 120, dtype=torch.uint8)
    side = size // 6
    for t in range(frames):
        x = (8 + t * step) % (size - side)
        video[t, :, size // 4 : size // 4 + side, x : x + side] = torch.tensor([230, 20, 20], dtype=torch.uint8)[:, None, None]
    return video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (RAFT needs >= 128)")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffalign.eval.vbench import IMPLEMENTED, ModelOptions, VBenchPrompt, Video, build_dimensions
    from tests.tiny.scorers import aesthetic_head, hf_clip
    from tests.tiny.vbench import TINY_MUSIQ, ColourBlobDetector, colour_of, dino_vit, musiq_weights, raft_weights

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        options = ModelOptions(
            dino=str(dino_vit(root / "dino")), clip_b32=str(hf_clip(root / "clip", image_size=224, patch_size=32)),
            clip_l14=str(root / "clip"), aesthetic_head=str(aesthetic_head(root / "head.pth", input_size=16, version="v1")),
            raft_weights=str(raft_weights(root / "raft.pth")), musiq_architecture=TINY_MUSIQ,
            detector=ColourBlobDetector(), classify_colors=colour_of,
        )
        if importlib.util.find_spec("pyiqa") is not None:
            options.musiq_weights = str(musiq_weights(root / "musiq.pth"))
        names = [n for n in IMPLEMENTED if n != "imaging_quality" or options.musiq_weights]
        built = build_dimensions(names, options)
        item = VBenchPrompt("a red car on the left of a car", names, {
            "object_class": {"object": "car"}, "multiple_objects": {"object": "car and car"}, "color": {"color": "red"},
            "appearance_style": {"appearance_style": "oil painting"},
            "spatial_relationship": {"spatial_relationship": {"object_a": "car", "object_b": "car", "relationship": "on the left of"}},
        })
        videos = [Video(synthetic_video(args.frames, args.size, step), args.fps) for step in range(args.videos)]
        print(f"{args.videos} videos of {args.frames} frames at {args.size}×{args.size}, {args.threads} thread(s)")
        print("| dimension | videos/s | s/video |")
        print("|---|---|---|")
        total = 0.0
        for name in names:
            dimension = built[name]
            dimension(videos[0], item)  # warm-up
            start = time.perf_counter()
            for video in videos:
                dimension(video, item)
            seconds = time.perf_counter() - start
            total += seconds
            print(f"| {name} | {len(videos) / seconds:.2f} | {seconds / len(videos):.3f} |")
        print(f"| **all {len(names)}** | {len(videos) / total:.3f} | {total / len(videos):.2f} |")


if __name__ == "__main__":
    main()
