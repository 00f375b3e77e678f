"""Bytes a video rollout keeps, every step's latents (``keep_latents="all"``, what every rollout kept before)
versus the final latents only (``"final"``, what IPO and evaluation declare), on the tiny Wan test model,
measured with ``Rollout.nbytes()``; plus the latent bytes of one real Wan 2.1 480x832 81-frame video at 50
steps from its latent shape (16 channels, time / 4, space / 8), float32. Run from the repository root::

    python bench/video_rollout_memory.py [--steps 20] [--batch 4]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffalign.pipelines import load  # noqa: E402
from tests import tiny  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        adapter = load(str(tiny.build("wan", Path(folder) / "wan")))
        size = tiny.SMALL_SAMPLE_SIZE["wan"]
        for keep in ("all", "final"):
            rollout = adapter.sample(["a red cat"] * args.batch, steps=args.steps, keep_latents=keep,
                                     generator=torch.Generator().manual_seed(0), **size)
            latents = rollout.latents.numel() * rollout.latents.element_size()
            print(f"tiny Wan {size}, {args.batch} videos, {args.steps} steps, keep_latents={keep!r}: "
                  f"rollout {rollout.nbytes() / 1024:.1f} KiB (latents {latents / 1024:.1f} KiB, shape {tuple(rollout.latents.shape)})")
    per_step = 16 * ((81 - 1) // 4 + 1) * (480 // 8) * (832 // 8) * 4
    print(f"Wan 2.1 480x832x81, 50 steps, one video, float32 latents: all {51 * per_step / 2**20:.0f} MiB, "
          f"final {per_step / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
