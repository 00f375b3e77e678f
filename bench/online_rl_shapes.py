"""Algorithms on ShapesWorld, side by side: time to reach a held-out reward target.

The online trainers (DDPO, Flow-GRPO, AWM) by default; reward backpropagation (``draft``, ``alignprop``,
``refl``: they optimise the differentiable proxy ``shapes_reward``, so they are scored by the judge as their
gold, ``eval.gold = "shapes"``) and FIND (``find``, its multi-prompt variant as ``diffalign demo`` trains it: the
model frozen, one initial-noise law per prompt) from the same start; the preference trainers (``--algorithms dpo smpo``,
``kto``) train on one preference dataset built once from the model with the judge (``--data DIR`` to reuse
one built by ``diffalign prefs build``), so they compare from the same data budget; their clock counts the
updates only (the data is built before).

Every algorithm starts from the same shipped model (``--model``, default ``shapes-flow``: the
algorithms are family-agnostic, so all three run on it and only the algorithm differs), uses its
own shipped ``*_shapes`` recipe, and is evaluated after every epoch on the same held-out prompts
with fixed noise, with the sampler settings its recipe evaluates with (all three recipes evaluate
without CFG) unless ``--eval-guidance``/``--eval-steps`` force others. The clock counts training
time only (sampling rollouts + updates), not the evaluations.

The target is each run's own start (held-out judge score of the base model under its evaluation
settings) plus ``--target-gain``, or the absolute ``--target`` if given. Reported: wall seconds and epochs to reach it, and ratios against
Flow-GRPO (the AWM paper's headline comparison: AWM reaches Flow-GRPO's reward faster), and the
final gain with its paired standard error over prompts: a time to a target smaller than about two
standard errors measures noise, not learning.

    python bench/online_rl_shapes.py --epochs 12 --target-gain 0.05
    python bench/online_rl_shapes.py --algorithms awm flow_grpo --model shapes-sd
    python bench/online_rl_shapes.py --report runs/bench-online-rl --target-gain 0.05   # re-score saved curves
    python bench/online_rl_shapes.py --algorithms dpo smpo --reference dpo --model shapes-sd --out runs/bench-prefs
    python bench/online_rl_shapes.py --algorithms draft awm find --reference draft --model shapes-sd \
        --eval-steps 10 --eval-guidance 1 --num-eval 64 --epochs 20 --target-gain 0.03 --out runs/bench-backprop

Writes ``OUT/results.json``, ``OUT/results.md`` and ``OUT/curves.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffalign.demo import DEMO_OVERRIDES, PREFERENCE_DATA  # noqa: E402

#: trainers that collect their own samples (no preference data)
ONLINE = ("ddpo", "flow_grpo", "awm", "draft", "alignprop", "refl", "find")
ALGORITHMS = (*ONLINE, "dpo", "kto", "smpo")
#: the held-out measure is always the exact judge
JUDGE = "shapes"


def run_algorithm(algorithm: str, args: argparse.Namespace, out: Path) -> dict:
    from diffalign.config import load_config
    from diffalign.training.trainer import Trainer, recipe_path

    overrides = [
        f"run.epochs={args.epochs}", f"run.seed={args.seed}", f"model.source={args.model}", "eval.at_start=false",
        "eval.every=0", "run.checkpoint_every=0", "run.progress=false", "run.log_with=",
        f"prompts.num_eval={args.num_eval}",
        *([f"eval.steps={args.eval_steps}"] if args.eval_steps else []),
        *([f"eval.guidance_scale={args.eval_guidance}"] if args.eval_guidance is not None else []),
        *DEMO_OVERRIDES.get(algorithm, []),
        *args.set,
    ]
    if algorithm not in ONLINE:
        overrides.append(f"data.source={preference_data(args) / PREFERENCE_DATA[algorithm]}")
    proxy = load_config(recipe_path(f"{algorithm}_shapes"), overrides).reward.spec != JUDGE
    if proxy:  # the judge is the held-out measure of every run: a proxy's run is scored by it as its gold
        overrides.append(f"eval.gold={JUDGE}")
    trainer = Trainer(f"{algorithm}_shapes", overrides=overrides, run_dir=out / algorithm)
    e = trainer.config.eval
    settings = {"eval_steps": e.steps, "eval_guidance": e.guidance_scale, "reward": trainer.config.reward.spec}
    scores = "eval/golds" if proxy else "eval/rewards"
    curve, first, last = held_out_curve(trainer, args.epochs, algorithm, scores)
    trainer.close()
    return {"algorithm": algorithm, "curve": curve, "gain": paired_gain(first[scores], last[scores]), **settings}


def held_out_curve(trainer, epochs: int, label: str,
                   scores: str = "eval/rewards") -> tuple[list[tuple[int, float, float]], dict, dict]:
    """Train ``epochs`` epochs, evaluating after each: ``[(epoch, training seconds, held-out score)]`` from epoch 0,
    and the first and last evaluations (with their per-prompt scores ``scores``: ``eval/golds`` for a run whose
    reward is a proxy). The clock counts training only."""
    def mean(result: dict) -> float:
        return sum(result[scores]) / len(result[scores])

    first = trainer.evaluate(save_grid=False)
    curve = [(0, 0.0, mean(first))]
    print(f"[{label}] epoch 0: held-out reward {curve[0][2]:.4f}", flush=True)
    train_seconds, last = 0.0, first
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        # one more than run: the loop's own end-of-run evaluation never lands inside the clock
        trainer.train(epochs=epochs + 1, stop_after=1)
        train_seconds += time.perf_counter() - started
        last = trainer.evaluate(save_grid=False)
        curve.append((epoch, train_seconds, mean(last)))
        print(f"[{label}] epoch {epoch}: held-out reward {curve[-1][2]:.4f} after {train_seconds:.1f} s of training", flush=True)
    return curve, first, last


def preference_data(args: argparse.Namespace) -> Path:
    """The preference data every preference algorithm of the run trains on: ``--data``, or built once into
    ``OUT/data`` from ``--model`` with the judge, as ``diffalign demo`` builds it."""
    if args.data is None:
        args.data = args.out / "data"
        if not (args.data / "pairs.jsonl").exists():
            from diffalign.demo import build_shapes_preference_data
            from diffalign.pipelines import load

            build_shapes_preference_data(load(args.model), args.data, "dpo", args.data_prompts, args.seed, True, print)
    return args.data


def paired_gain(before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean per-prompt gain and its standard error (same prompts and noise before and after)."""
    gain = torch.tensor(after, dtype=torch.float64) - torch.tensor(before, dtype=torch.float64)
    return gain.mean().item(), (gain.std().item() / len(gain) ** 0.5) if len(gain) > 1 else float("nan")


def time_to_target(curve: list[tuple[int, float, float]], target: float,
                   held: bool = False) -> tuple[int | None, float | None]:
    """``(epoch, training seconds)`` of the first evaluation at or above ``target``; with ``held``, the
    first one from which every later evaluation stays there (one lucky evaluation does not count)."""
    found = (None, None)
    for epoch, seconds, reward in curve[1:]:
        if reward < target:
            found = (None, None)
        elif found[0] is None:
            found = (epoch, seconds)
            if not held:
                return found
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=["ddpo", "flow_grpo", "awm"])
    parser.add_argument("--reference", choices=ALGORITHMS, default=None,
                        help="times are also given relative to this algorithm's (default flow_grpo; with --report, "
                             "the saved run's)")
    parser.add_argument("--data", type=Path, default=None,
                        help="preference data folder (diffalign prefs build) for dpo/kto/smpo; default: built into OUT/data")
    parser.add_argument("--data-prompts", type=int, default=192, help="prompts of the preference data built")
    parser.add_argument("--model", default="shapes-flow")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--num-eval", type=int, default=32, help="held-out prompts")
    parser.add_argument("--eval-steps", type=int, default=None, help="default: each recipe's eval.steps")
    parser.add_argument("--eval-guidance", type=float, default=None, help="default: each recipe's eval.guidance_scale")
    parser.add_argument("--target", type=float, default=None, help="absolute held-out reward target")
    parser.add_argument("--target-gain", type=float, default=0.05, help="target = each run's starting held-out reward + gain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-online-rl"))
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="train nothing: re-score the curves saved in DIR/results.json against this target")
    args = parser.parse_args(argv)
    if args.report is not None:
        saved = json.loads((args.report / "results.json").read_text())
        runs = saved["runs"]
        for key in ("model", "epochs", "num_eval", "threads"):
            setattr(args, key, type(getattr(args, key))(saved["args"][key]))
        args.reference = args.reference or saved["args"]["reference"]
        args.out = args.report
        return _report(runs, args, suffix=f"_gain{args.target_gain:g}" if args.target is None else f"_target{args.target:g}")
    args.reference = args.reference or "flow_grpo"
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [run_algorithm(a, args, args.out) for a in args.algorithms]
    return _report(runs, args)


def _report(runs: list[dict], args: argparse.Namespace, suffix: str = "") -> int:
    reference = next((r for r in runs if r["algorithm"] == args.reference), None)
    name = args.reference
    for run in runs:
        run["start"] = run["curve"][0][2]
        run["final"] = run["curve"][-1][2]
        last_half = [reward for _, _, reward in run["curve"][1:]][args.epochs // 2:]
        run["last_half_mean"] = sum(last_half) / len(last_half)
        run["target"] = args.target if args.target is not None else run["start"] + args.target_gain
        run["seconds_per_epoch"] = run["curve"][-1][1] / args.epochs
        for kind, held in (("first", False), ("held", True)):
            run[f"epochs_to_target_{kind}"], run[f"seconds_to_target_{kind}"] = time_to_target(
                run["curve"], run["target"], held=held)
    for run in runs:
        for kind in ("first", "held"):
            run.pop(f"time_ratio_vs_reference_{kind}", None)  # stale values from a re-scored results.json
            run.pop(f"time_ratio_vs_reference_{kind}_is_bound", None)
            mine = run[f"seconds_to_target_{kind}"]
            theirs = reference[f"seconds_to_target_{kind}"] if reference else None
            if reference is None or mine is None or run is reference:
                continue
            # the reference never got there: its whole training time bounds the ratio from above
            run[f"time_ratio_vs_reference_{kind}"] = mine / (theirs or reference["curve"][-1][1])
            run[f"time_ratio_vs_reference_{kind}_is_bound"] = theirs is None

    def cell(run: dict, kind: str) -> str:
        epoch, seconds = run[f"epochs_to_target_{kind}"], run[f"seconds_to_target_{kind}"]
        if epoch is None:
            return "not reached"
        ratio = run.get(f"time_ratio_vs_reference_{kind}")
        if ratio is None:
            return f"{epoch} / {seconds:.1f} s"
        bound = "< " if run[f"time_ratio_vs_reference_{kind}_is_bound"] else ""
        return f"{epoch} / {seconds:.1f} s ({bound}{ratio:.2f}x)"

    def gain_cell(run: dict) -> str:
        if "gain" not in run:  # results.json written before the bench kept per-prompt rewards
            return "-"
        mean, stderr = run["gain"]
        return f"{mean:+.3f} ± {stderr:.3f}"

    lines = [
        f"# ShapesWorld ({args.model}): time to a held-out judge-score target",
        "",
        f"{args.epochs} epochs each, {args.num_eval} held-out prompts, training time only, {args.threads} CPU thread(s); "
        + (f"target {args.target}." if args.target is not None else f"target: start + {args.target_gain}.")
        + f" Cells: epochs / training seconds to the target (time relative to {name}'s). *first*: the first"
        " evaluation at the target; *held*: the first from which every later evaluation stays there.",
        "",
        "| algorithm | eval steps / CFG | start | target | final | final gain ± s.e. | mean of last half | first | held "
        "| s/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(f"| {run['algorithm']} | {run['eval_steps']} / {run['eval_guidance']} | {run['start']:.3f} "
                     f"| {run['target']:.3f} | {run['final']:.3f} | {gain_cell(run)} | {run['last_half_mean']:.3f} | {cell(run, 'first')} "
                     f"| {cell(run, 'held')} | {run['seconds_per_epoch']:.1f} |")
    table = "\n".join(lines) + "\n"
    (args.out / f"results{suffix}.md").write_text(table)
    (args.out / f"results{suffix}.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                                "runs": runs}, indent=2) + "\n")
    _plot(runs, args.out / f"curves{suffix}.png")
    print(table)
    return 0


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        _, seconds, rewards = zip(*run["curve"])
        line, = ax.plot(seconds, rewards, marker="o", label=run["algorithm"])
        ax.axhline(run["target"], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("training seconds (CPU)")
    ax.set_ylabel("held-out judge score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
