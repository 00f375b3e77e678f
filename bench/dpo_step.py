"""Diffusion-DPO optimizer steps per second and peak memory on a tiny SD 1.5-style model, fixed pair batch.

One optimizer step = the DPO loss of ``--pairs`` pairs (policy on 2 x pairs latents with gradient, the
frozen reference without) + backward + AdamW, through the real trainer (``Trainer.train_on``). The same run
times the plain denoising loss on the preferred images (``dpo.sft = true``: half the images, no reference),
the cost DPO is usually compared with, and reports DPO's time as a ratio of it. LoRA and full fine-tuning.
Peak memory: the process's peak resident set (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA), after the
model is loaded. Run from the repository root::

    python bench/dpo_step.py [--pairs 8] [--steps 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffalign.pipelines import load  # noqa: E402
from diffalign.training import Trainer  # noqa: E402
from tests import tiny  # noqa: E402
from tests.test_trainer import base_config  # noqa: E402
from tests.tiny.prefs import write_pairs  # noqa: E402


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(model: Path, data: Path, pairs: int, steps: int, lora: bool, sft: bool, device: str) -> tuple[float, float]:
    config = base_config("dpo", model, data={"source": str(data / "pairs.jsonl"), "examples_per_epoch": pairs},
                         model={"lora": lora}, train={"batch_size": pairs}, dpo={"sft": sft}, eval={"every": 0},
                         run={"cpu": device == "cpu"})
    trainer = Trainer(config, adapter=load(str(model), device=device), reward=lambda m, p: m.mean(dim=(1, 2, 3)),
                      run_dir=tempfile.mkdtemp())
    batch = trainer.collect(0)  # the fixed pair batch: every step trains on it
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train_on(batch, 0)  # warm-up
    start = time.perf_counter()
    for step in range(steps):
        trainer.train_on(batch, step + 1)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start), peak_memory_mb(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp())
    model = tiny.build("sd15", folder / "sd15")
    write_pairs(folder / "data", 16, count=args.pairs)
    rows = []
    for lora in (True, False):
        sft = time_steps(model, folder / "data", args.pairs, args.steps, lora, True, args.device)
        dpo = time_steps(model, folder / "data", args.pairs, args.steps, lora, False, args.device)
        rows.append((("LoRA" if lora else "full"), dpo, sft))
    print(f"Diffusion-DPO steps on the tiny SD 1.5 model, {args.pairs} pairs a step, {args.device}, {args.threads} thread(s)\n")
    print("| weights | DPO steps/s | SFT steps/s | DPO time / SFT time | peak memory after (MB) |")
    print("|---|---|---|---|---|")
    for name, (dpo_rate, dpo_mem), (sft_rate, _) in rows:
        print(f"| {name} | {dpo_rate:.2f} | {sft_rate:.2f} | {sft_rate / dpo_rate:.2f}x | {dpo_mem:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
