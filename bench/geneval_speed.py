"""GenEval scoring speed: images scored per second with the tiny random models (detector at mmdet's
full 1333×800 test scale, CLIP colour classifier), end to end through ``score_images`` (PNG read,
detection, colours, rules, JSONL row)::

    python bench/geneval_speed.py --threads 1 --prompts 6 --size 512

The figure measures the harness overhead and the pre/post-processing at real image sizes, not
the real Swin-S / ViT-L-14 models (their weights are not available offline).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from diffalign.eval.geneval.colors import CLIPColorClassifier
    from diffalign.eval.geneval.detector import Mask2FormerDetector, object_names
    from diffalign.eval.geneval.harness import load_prompts, sample_path, score_images
    from tests.tiny.geneval import mask2former
    from tests.tiny.scorers import open_clip_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=6, help="first prompt of each task (6) or more")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--size", type=int, default=512, help="image side (GenEval runs are usually 512 or 1024)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="geneval-bench-"))
    try:
        detector_path = mask2former(root / "mask2former", confident_class=object_names().index("dog"))
        clip_path = open_clip_folder(root / "clip")
        items = load_prompts()
        chosen, seen = [], set()
        for item in items:  # one prompt per task first, then in file order
            if item.tag not in seen:
                seen.add(item.tag)
                chosen.append(item)
        chosen += [i for i in items if i not in chosen][: max(0, args.prompts - len(chosen))]
        chosen = chosen[: args.prompts]
        rng = np.random.default_rng(0)
        images = root / "images"
        for index, item in enumerate(chosen):
            (images / f"{index:05d}" / "samples").mkdir(parents=True)
            (images / f"{index:05d}" / "metadata.jsonl").write_text(json.dumps(item.metadata) + "\n")
            for n in range(args.images_per_prompt):
                pixels = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(sample_path(images, index, n))
        detector = Mask2FormerDetector(detector_path, device=args.device)
        colours = CLIPColorClassifier(clip_path, device=args.device)
        score_images(images, root / "warmup", detector, colours, progress=False)  # warm-up (allocations, caches)
        start = time.perf_counter()
        summary = score_images(images, root / "out", detector, colours, progress=False)
        seconds = time.perf_counter() - start
        count = summary["images"]
        print(f"GenEval scoring, tiny models, {args.size}² images, {torch.get_num_threads()} thread(s), {args.device}: "
              f"{count} images in {seconds:.2f} s = {count / seconds:.2f} images/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
