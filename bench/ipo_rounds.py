"""Seconds per IPO round on ``shapes-video`` and where they go (sampling, labelling, training, evaluation),
from the files a run writes: each round's ``metrics.json`` (sampling and labelling seconds) and the run's
``metrics.jsonl`` (seconds per epoch, which include the round's sampling and labelling on its first epoch).
Also the sampling cost alone: seconds to sample 8 videos at the model's defaults. Run from the repository root::

    python bench/ipo_rounds.py --out runs/bench-ipo [--rounds 3] [--set KEY=VALUE ...]
    python bench/ipo_rounds.py --report runs/bench-ipo      # the table again from a finished run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def seconds_to_sample_8(model: str = "shapes-video") -> float:
    from diffalign.pipelines import load, shipped_model_path
    from diffalign.shapes.models import read_defaults

    adapter = load(model)
    d = read_defaults(shipped_model_path(model) or model)
    prompts = ["a red circle moving to the right", "a still blue square"] * 4

    def sample():
        adapter.sample(prompts, steps=d["num_inference_steps"], guidance_scale=d["guidance_scale"],
                       generator=torch.Generator().manual_seed(0), height=d["height"], width=d["width"], num_frames=d["num_frames"])

    sample()  # warm-up
    started = time.perf_counter()
    sample()
    return time.perf_counter() - started


def report(run: Path) -> list[str]:
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [row for row in epochs if "seconds" in row]
    rounds = sorted((run / "rounds").glob("round_*"))
    per_round = max(1, len(epochs) // max(1, len(rounds)))
    lines = ["| round | sampling s | labelling s | training s | round s | pairs | judge score after |", "|---|---|---|---|---|---|---|"]
    for r, folder in enumerate(rounds):
        stats = json.loads((folder / "metrics.json").read_text())
        rows = epochs[r * per_round : (r + 1) * per_round]
        total = sum(row["seconds"] for row in rows)
        collect = stats["sampling_seconds"] + stats["labelling_seconds"]
        after = json.loads((folder / "eval.json").read_text()).get("eval/reward_mean") if (folder / "eval.json").exists() else None
        lines.append(f"| {r} | {stats['sampling_seconds']:.1f} | {stats['labelling_seconds']:.1f} | {total - collect:.1f} | {total:.1f} "
                     f"| {stats['examples']} | {after if after is None else f'{after:.3f}'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="run folder (must not hold a run)")
    parser.add_argument("--report", type=Path, help="print the table of a finished run and exit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="shapes-video", help="shipped name or folder (default shapes-video)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.report:
        print("\n".join(report(args.report)))
        return
    if args.out is None:
        parser.error("--out or --report is required")
    from diffalign.training import Trainer

    print(f"sampling 8 videos at {args.model}'s defaults: {seconds_to_sample_8(args.model):.2f} s")
    trainer = Trainer("ipo_shapes_video", overrides=[f"run.epochs={2 * args.rounds}", "run.progress=false", "run.log_with=",
                                                      f"model.source={args.model}", *args.overrides], run_dir=args.out)
    started = time.time()
    trainer.train()
    print(f"{args.rounds} rounds in {time.time() - started:.0f} s (with the held-out evaluations)")
    print("\n".join(report(args.out)))


if __name__ == "__main__":
    main()
