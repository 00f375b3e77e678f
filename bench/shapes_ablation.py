"""Which of a ShapesWorld recipe's choices matter: each removed in turn, full ShapesEval after a CPU-minute budget.

The recipe is ``awm_shapes`` (what ``diffalign demo --long`` trains). Each variant undoes one of its choices,
back to the value the official AWM GenEval recipe (``awm_sd35m_geneval``) or the trainer's default uses, and
trains from the same start for ``--minutes`` of one CPU thread; the full suite (90 prompts x 4 images, the
model's sampling defaults) runs at the start (once, shared by every variant: ``OUT/start-MODEL-...json``) and at the end.
The recipe itself runs on ``--seeds`` (default 0 and 1): the spread between its seeds is the noise floor a
variant's difference has to clear.

    python bench/shapes_ablation.py --minutes 10
    python bench/shapes_ablation.py --variants binary_reward sde_rollouts   # a subset, e.g. one per process
    python bench/shapes_ablation.py --variants official_lr --seeds 1         # a variant's second seed

Each run is saved under ``OUT/VARIANT-sSEED/`` and reused on a rerun with the same settings, so two processes
with disjoint ``--variants`` can share one ``--out``; a last call with ``--report`` writes ``OUT/ablation.md`` and
``OUT/ablation.json`` from what is saved.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes_eval_curves import check_recipe, run_algorithm  # noqa: E402

ALGORITHM = "awm"
#: variant -> (the choice of awm_shapes it removes, the overrides that remove it)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("nothing: awm_shapes as shipped", []),
    "binary_reward": ("dense judge credit (the judge's 0/1 verdict instead, as GenEval's reward)",
                      ['reward.options={mode="binary"}']),
    "sde_rollouts": ("deterministic rollouts (stochastic DDIM, eta 1, instead)", ["sampling.stochastic=true"]),
    "official_lr": ("learning rate 1e-3 (the official 3e-4)", ["train.learning_rate=3e-4"]),
    "no_weight_ema": ("weight EMA 0.99 for evaluation (the raw weights)", ["train.ema=false"]),
    "no_kl": ("KL to the reference, beta 1e-3 (none)", ["awm.kl_beta=0"]),
    "official_group": ("groups of 8 (the official 24: 2 prompts x 24 an epoch)",
                       ["sampling.group_size=24", "sampling.batch_size=24"]),
    "official_rank": ("LoRA rank 8 (the official rank 32, alpha 64)", ["model.lora_rank=32", "model.lora_alpha=64"]),
}


def run_args(args: argparse.Namespace, variant: str, seed: int) -> argparse.Namespace:
    """The curve bench's arguments for one run: evaluated at the start and the end only."""
    return argparse.Namespace(model=args.model, minutes=args.minutes, every=args.minutes, steps=args.steps,
                              guidance_scale=None, seed=seed, threads=args.threads, set=VARIANTS[variant][1],
                              out=args.out / f"{variant}-s{seed}")


def start_file(args: argparse.Namespace) -> Path:
    """The untrained model's point, shared by every run of this model and sampler into ``--out``."""
    return args.out / f"start-{Path(args.model).name}-steps{args.steps or 'default'}.json"


def runs_of(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [(v, s) for v in args.variants for s in (args.seeds if v == "recipe" else args.seeds[:1])]


def saved_curves(args: argparse.Namespace) -> dict[tuple[str, int], list[dict]]:
    """The curves of every finished run under ``--out``, by (variant, seed)."""
    saved = {}
    for variant in VARIANTS:  # every seed a run was made with (``--seeds 1 --variants X`` adds X's second seed)
        for path in sorted(args.out.glob(f"{variant}-s*/{ALGORITHM}/result.json")):
            seed = path.parent.parent.name.rsplit("-s", 1)[1]
            if seed.isdigit():
                saved[variant, int(seed)] = json.loads(path.read_text())["curve"]
    if not saved:
        raise SystemExit(f"nothing saved under {args.out} yet")
    return saved


def report(args: argparse.Namespace, saved: dict[tuple[str, int], list[dict]]) -> str:
    start = next(iter(saved.values()))[0]
    tasks = list(start["tasks"])
    recipe_seeds = sorted(seed for variant, seed in saved if variant == "recipe")
    recipe = [saved["recipe", seed][-1]["overall"] for seed in recipe_seeds]
    floor = (max(recipe) - min(recipe)) if len(recipe) > 1 else None
    sampler = f"{args.steps} sampler steps" if args.steps else "the model's sampling defaults"
    # the budget the saved runs were trained for (a --report call's own --minutes may differ)
    budgets = sorted({f"{curve[-1]['minutes']:.0f}" for curve in saved.values()}, key=float)
    lines = [f"# Ablation of awm_shapes on {args.model}: each choice removed in turn", "",
             f"Full ShapesEval (90 prompts x 4 images, {sampler}) after {' or '.join(budgets)} CPU-minutes of "
             f"one thread; start {start['overall']:.3f}. Seeds of the recipe: "
             + ", ".join(str(seed) for seed in recipe_seeds)
             + (f" (spread {floor:.3f}: the noise floor)." if floor is not None else "."), "",
             "| variant | removes | seed | epochs | final | vs recipe | " + " | ".join(tasks) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(tasks)]
    base = sum(recipe) / len(recipe) if recipe else None
    for (variant, seed), curve in saved.items():
        last = curve[-1]
        delta = "" if base is None else f"{last['overall'] - base:+.3f}"
        lines.append(f"| {variant} | {VARIANTS[variant][0]} | {seed} | {last['epoch']} | {last['overall']:.3f} | "
                     f"{delta} | " + " | ".join(f"{last['tasks'][k]:.2f}" for k in tasks) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--model", default="shapes-sd")
    parser.add_argument("--minutes", type=float, default=10.0, help="CPU-minutes of training per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the recipe (variants: the first)")
    parser.add_argument("--steps", type=int, default=None, help="ShapesEval sampler steps (default: the model's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only write the table from the saved runs")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-shapes-ablation"))
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error(f"--minutes must be a positive number, got {args.minutes}")
    if any(s < 0 for s in args.seeds):
        parser.error(f"--seeds must be non-negative, got {args.seeds}")
    if not args.report:
        for variant in args.variants:  # a variant that no longer fits the recipe fails before any model loads
            check_recipe(parser, ALGORITHM, VARIANTS[variant][1], variant)
        torch.set_num_threads(args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        for variant, seed in runs_of(args):
            print(f"== {variant} (seed {seed}): removes {VARIANTS[variant][0]}", flush=True)
            run_algorithm(ALGORITHM, run_args(args, variant, seed), start_file=start_file(args))
    saved = saved_curves(args)
    table = report(args, saved)
    (args.out / "ablation.md").write_text(table)
    runs = [{"variant": v, "seed": s, "removes": VARIANTS[v][0], "overrides": VARIANTS[v][1], "curve": curve}
            for (v, s), curve in saved.items()]
    (args.out / "ablation.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "runs": runs}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
