"""SePPO vs Diffusion-DRO vs Diffusion-DPO on ShapesWorld from the same data budget: time to a held-out target.

One preference build of ``--prompts`` captions (``diffalign prefs build``: ``--images`` samples per caption from
the shipped model, scored by the judge) gives DPO its pairs; SePPO (winners) and DRO (experts) get the rendered
ground truth of the same captions (``diffalign prefs experts``), as their ``*_shapes`` recipes train. Each algorithm
trains with its shipped ``*_shapes`` recipe and the same ``data.examples_per_epoch`` (the pairs, winners or
experts per epoch), and is evaluated after every epoch on the same held-out prompts with fixed noise. The clock
counts training time only (SePPO's reference samples and DRO's replay trajectories included), not the
evaluations. Reported: epochs and seconds to ``start + --target-gain`` as ratios to DPO's, the final paired gain
and the peak memory growth of the process per algorithm (resident set size, CPU: a peak, so run one
algorithm per process for absolute numbers), with the parameters each
algorithm holds at SD 1.5 size.

    python bench/preference_shapes.py --epochs 20 --examples-per-epoch 64 --target-gain 0.02

Writes ``OUT/results.json`` and ``OUT/results.md``.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _saved import reuse_saved  # noqa: E402
from online_rl_shapes import held_out_curve, paired_gain, time_to_target  # noqa: E402

ALGORITHMS = ("dpo", "seppo", "dro")
#: one optimizer update per this many examples, for every algorithm (the recipes' batch)
TRAIN_BATCH = 16
#: Stable Diffusion 1.5's UNet, and a rank-4 LoRA on its attention projections (to_q, to_k, to_v, to_out.0)
SD15_UNET_PARAMS = 859_520_964
SD15_LORA4_PARAMS = 797_184


def build_data(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    from diffalign import scorers
    from diffalign.pipelines import load
    from diffalign.preferences.build import build_preferences, shapes_experts
    from diffalign.training.prompts import derive_seed, prompt_source

    prompts = prompt_source("shapes").draw(args.prompts, derive_seed(args.seed, "bench-preference-data"))
    if not (out / "prefs" / "pairs.jsonl").exists():
        build_preferences(load(args.model), prompts, scorers.load("shapes", mode="fraction"), out / "prefs",
                          images_per_prompt=args.images, steps=10, guidance_scale=1.0, seed=args.seed, batch_size=16)
    if not (out / "experts" / "experts.jsonl").exists():
        shapes_experts(prompts, out / "experts", seed=args.seed)
    return {"dpo": out / "prefs" / "pairs.jsonl", "seppo": out / "experts" / "experts.jsonl",
            "dro": out / "experts" / "experts.jsonl"}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recipe_overrides(algorithm: str, source: Path, args: argparse.Namespace) -> list[str]:
    """The same budget for every algorithm: epochs, examples per epoch, one update per ``TRAIN_BATCH`` examples."""
    overrides = [f"run.epochs={args.epochs}", f"run.seed={args.seed}", f"model.source={args.model}", "eval.at_start=false",
                 "eval.every=0", "run.checkpoint_every=0", "run.progress=false", "run.log_with=",
                 f"prompts.num_eval={args.num_eval}", f"data.source={source}",
                 f"data.examples_per_epoch={args.examples_per_epoch}", f"train.batch_size={TRAIN_BATCH}",
                 f"train.updates_per_epoch={args.examples_per_epoch // TRAIN_BATCH}"]
    if algorithm == "dro":  # as dro_shapes (the official sync): the buffer holds the epoch's own batch alone
        overrides.append(f"dro.buffer_size={args.examples_per_epoch}")
    return [*overrides, *args.set]


def run_settings(args: argparse.Namespace) -> dict[str, str]:
    """What a saved result depends on: a rerun into the same ``--out`` reuses it only when these match."""
    return {key: str(getattr(args, key)) for key in ("model", "prompts", "images", "examples_per_epoch", "epochs",
                                                      "num_eval", "seed", "threads", "set")}


def run_algorithm(algorithm: str, source: Path, args: argparse.Namespace, out: Path) -> dict:
    """Train and evaluate one algorithm; its result is kept in ``OUT/ALGORITHM/bench.json`` and reused on a rerun."""
    from diffalign.training.trainer import Trainer

    saved = out / algorithm / "bench.json"
    settings = run_settings(args)
    reused = reuse_saved(saved, settings, algorithm)
    if reused is not None:
        return reused
    rss_before = peak_rss_mib()
    trainer = Trainer(f"{algorithm}_shapes", overrides=recipe_overrides(algorithm, source, args), run_dir=out / algorithm)
    curve, first, last = held_out_curve(trainer, args.epochs, algorithm)
    snapshots = {name: sum(t.numel() for t in trainer.adapter.snapshot_weights(name).values())
                 for name in trainer.adapter.snapshot_names}
    trainer.close()
    result = {"algorithm": algorithm, "settings": settings, "curve": curve, "gain": paired_gain(first["eval/rewards"], last["eval/rewards"]),
              "peak_rss_growth_mib": peak_rss_mib() - rss_before, "snapshot_params": snapshots,
              "trainable_params": sum(p.numel() for p in trainer.params)}
    saved.write_text(json.dumps(result, indent=2) + "\n")
    return result


def memory_note() -> list[str]:
    full, lora = SD15_UNET_PARAMS, SD15_LORA4_PARAMS
    return [
        "Parameters held at SD 1.5 size (UNet 859.5M; a rank-4 attention LoRA 0.80M):",
        "",
        "| algorithm | full fine-tune | LoRA (snapshots are adapters; the reference is the base with adapters off) |",
        "|---|---|---|",
        f"| DPO | trainable + frozen reference = {2 * full / 1e9:.2f}B | {full / 1e9:.2f}B + {lora / 1e6:.2f}M |",
        f"| SePPO (K = 7 pool) | trainable + frozen base copy + 7 pool snapshots = {9 * full / 1e9:.2f}B | "
        f"{full / 1e9:.2f}B + 8 x {lora / 1e6:.2f}M |",
        f"| DRO | trainable + reference + lagged sampler = {3 * full / 1e9:.2f}B | {full / 1e9:.2f}B + 2 x {lora / 1e6:.2f}M |",
        "",
        "Snapshots are swapped into the parameters' storage (no copy on use), so only their storage counts.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--model", default="shapes-sd")
    parser.add_argument("--prompts", type=int, default=256, help="captions of the shared data budget")
    parser.add_argument("--images", type=int, default=4, help="samples per caption of the preference build")
    parser.add_argument("--examples-per-epoch", type=int, default=16, help="pairs / winners / experts per epoch")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--num-eval", type=int, default=64, help="held-out prompts")
    parser.add_argument("--target-gain", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-preference"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    from diffalign.config import ConfigError, load_config
    from diffalign.training.algorithms import ALGORITHMS as REGISTRY
    from diffalign.training.trainer import recipe_path

    if args.examples_per_epoch % TRAIN_BATCH:
        parser.error(f"--examples-per-epoch {args.examples_per_epoch} must be a multiple of {TRAIN_BATCH} (one update per {TRAIN_BATCH})")
    for algorithm in args.algorithms:  # a bad --set or budget fails before any data is built or model loaded
        try:
            REGISTRY.get(algorithm)(load_config(recipe_path(f"{algorithm}_shapes"), recipe_overrides(algorithm, Path("x"), args)))
        except ConfigError as err:
            parser.error(f"{algorithm}: {err}")
    sources = build_data(args, args.out / "data")
    runs = [run_algorithm(a, sources[a], args, args.out) for a in args.algorithms]
    reference = next((r for r in runs if r["algorithm"] == "dpo"), None)
    lines = [f"# Preference trainers on ShapesWorld ({args.model}), same data budget ({args.prompts} captions)", "",
             f"{args.epochs} epochs of {args.examples_per_epoch} examples, {args.num_eval} held-out prompts, training "
             f"time only, {args.threads} CPU thread(s); target: start + {args.target_gain}.", "",
             "| algorithm | start | final gain ± s.e. | epochs / s to target | time vs DPO | epochs vs DPO | s/epoch "
             "| peak RSS growth (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        run["target"] = run["curve"][0][2] + args.target_gain
        run["epochs_to_target"], run["seconds_to_target"] = time_to_target(run["curve"], run["target"], held=True)
        ratio = epochs_ratio = "-"
        if reference is not None and run is not reference and run["seconds_to_target"] is not None:
            theirs, their_epochs = reference["seconds_to_target"], reference["epochs_to_target"]
            bound = "< " if theirs is None else ""  # DPO never got there: its whole run bounds the ratio
            ratio = f"{bound}{run['seconds_to_target'] / (theirs or reference['curve'][-1][1]):.2f}x"
            epochs_ratio = f"{bound}{run['epochs_to_target'] / (their_epochs or args.epochs):.2f}x"
        reached = ("not reached" if run["epochs_to_target"] is None
                   else f"{run['epochs_to_target']} / {run['seconds_to_target']:.1f} s")
        mean, stderr = run["gain"]
        lines.append(f"| {run['algorithm']} | {run['curve'][0][2]:.3f} | {mean:+.3f} ± {stderr:.3f} | {reached} | {ratio} "
                     f"| {epochs_ratio} | {run['curve'][-1][1] / args.epochs:.1f} | {run['peak_rss_growth_mib']:.0f} |")
    lines += ["", *memory_note()]
    table = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs},
                                                      indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
