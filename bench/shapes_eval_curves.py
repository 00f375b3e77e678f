"""Full ShapesEval against CPU-minutes of training, every algorithm from the same start: the figure a paper shows.

Each algorithm trains with its shipped ``*_shapes`` recipe on ``--model`` (FIND per prompt, as its demo trains it)
for ``--minutes`` of CPU time of this process (one thread by default: the budget is "minutes on one CPU thread").
At the start and every ``--every`` minutes the whole ShapesEval suite runs (90 prompts x 4 images, the model's
sampling defaults unless ``--steps`` / ``--guidance-scale``; the EMA weights where the recipe evaluates with them).
The clock stops during evaluations. Reported: the overall curve, each task's score at the start and the end, and
the minutes each algorithm needs to reach ``--targets`` (default 0.6 and 0.8; "not reached" within the budget).

The training prompts are the recipes' (the ShapesWorld grammar). Five of ShapesEval's six tasks hold every
prompt their grammar can make, so only ``color_attr``'s suite prompts can be held out of training; the others
are scored on prompts the grammar also draws for training, as GenEval-style RL recipes do with templates.

    python bench/shapes_eval_curves.py --algorithms awm ddpo find --minutes 30 --every 5

Each algorithm's curve is written to ``OUT/ALGORITHM/curve.jsonl`` as it grows, and its training state is
checkpointed after every evaluation: a rerun with the same settings reuses a finished curve and resumes an
interrupted one from its last evaluated point, as ``diffalign demo --long --resume`` does (a rerun with other
settings stops and says which differ). Writes ``OUT/results.json``, ``OUT/results.md`` and ``OUT/curves.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _saved import reuse_saved  # noqa: E402
from diffalign.demo import DEMO_OVERRIDES  # noqa: E402
from diffalign.errors import read_json, read_jsonl  # noqa: E402
from diffalign.eval.curves import (  # noqa: E402
    curve_point, full_shapes_eval, minutes_to, move_aside, plot_curves, resume_curve, train_for_minutes)

ALGORITHMS = ("ddpo", "flow_grpo", "awm", "draft", "alignprop", "refl", "find")


def settings_of(args: argparse.Namespace) -> dict[str, str]:
    """What a saved curve depends on."""
    return {key: str(getattr(args, key)) for key in ("model", "minutes", "every", "steps", "guidance_scale", "seed",
                                                      "threads", "set")}


def check_recipe(parser: argparse.ArgumentParser, algorithm: str, overrides: list[str], label: str) -> None:
    """``algorithm``'s ``*_shapes`` recipe with its demo overrides and ``overrides`` builds its algorithm; a
    one-line parser error naming ``label`` otherwise (before any model loads)."""
    from diffalign.config import ConfigError, load_config
    from diffalign.training.algorithms import ALGORITHMS as REGISTRY
    from diffalign.training.trainer import recipe_path

    try:
        REGISTRY.get(algorithm)(load_config(recipe_path(f"{algorithm}_shapes"),
                                            [*DEMO_OVERRIDES.get(algorithm, []), *overrides]))
    except ConfigError as err:
        parser.error(f"{label}: {err}")


def run_algorithm(algorithm: str, args: argparse.Namespace, start_file: Path | None = None) -> dict:
    """One algorithm's curve under ``args.out / algorithm``. ``start_file``: where the untrained model's point is
    shared between runs of the same start (read if there, written if not), so it is evaluated once."""
    from diffalign.training.checkpoint import find_latest_checkpoint
    from diffalign.training.trainer import Trainer

    folder = args.out / algorithm
    saved = folder / "result.json"
    reused = reuse_saved(saved, settings_of(args), algorithm)
    if reused is not None:
        return reused
    overrides = [f"model.source={args.model}", f"run.seed={args.seed}", "run.epochs=1000000", "eval.every=0",
                 "eval.at_start=false", "run.checkpoint_every=0", "run.progress=false", "run.log_with=",
                 *DEMO_OVERRIDES.get(algorithm, []), *args.set]
    curve_file, settings_file = folder / "curve.jsonl", folder / "settings.json"
    interrupted = curve_file.exists()
    if interrupted and settings_file.exists() and read_json(settings_file, "curve settings") != settings_of(args):
        raise SystemExit(f"{folder} holds an interrupted curve made with other settings: give another --out, "
                         f"or delete it to rerun {algorithm}")
    trainer = Trainer(f"{algorithm}_shapes", overrides=overrides, run_dir=folder / "run")
    folder.mkdir(parents=True, exist_ok=True)
    resumed = None
    if interrupted and settings_file.exists() and find_latest_checkpoint(folder / "run") is not None:
        checkpoint = trainer.resume()
        resumed = resume_curve(curve_file, read_jsonl(curve_file, "curve"), trainer.epoch, folder)
        print(f"[{algorithm}] resuming from {checkpoint} at {resumed[-1]['minutes']:.1f} CPU-minutes", flush=True)
    elif interrupted:  # no training state to go on from: the curve and its evaluations are kept aside, and it starts again
        kept = move_aside(curve_file)
        for evaluation in folder.glob("eval_*[0-9]"):
            move_aside(evaluation)
        print(f"[{algorithm}] an interrupted curve without a checkpoint was kept as {kept}; training again from the "
              f"start", flush=True)
    settings_file.write_text(json.dumps(settings_of(args), indent=2) + "\n")

    def evaluate(minutes: float, epoch: int, last: bool) -> dict:
        if epoch == 0 and start_file is not None and start_file.exists():
            return json.loads(start_file.read_text())
        point = curve_point(full_shapes_eval(trainer, folder / f"eval_{epoch:05d}", steps=args.steps,
                                             guidance_scale=args.guidance_scale))
        if epoch == 0 and start_file is not None:
            start_file.write_text(json.dumps(point) + "\n")
        return point

    curve = train_for_minutes(trainer, args.minutes, args.every, evaluate, curve_file,
                              log=lambda line: print(f"[{algorithm}] {line}", flush=True),
                              checkpoint=trainer.save_checkpoint, resumed=resumed)
    trainer.close()
    result = {"algorithm": algorithm, "settings": settings_of(args), "curve": curve}
    saved.write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(runs: list[dict], args: argparse.Namespace) -> str:
    tasks = list(runs[0]["curve"][0]["tasks"])
    lines = [f"# Full ShapesEval against CPU-minutes of training ({args.model})", "",
             f"{args.minutes:g} CPU-minutes each ({args.threads} thread(s)), ShapesEval every {args.every:g} minutes "
             "(90 prompts x 4 images); the clock stops during evaluations.", "",
             "| algorithm | start | final | best | " + " | ".join(f"min to {t:g}" for t in args.targets) + " | "
             + " | ".join(tasks) + " |",
             "|---|---|---|---|" + "---|" * len(args.targets) + "---|" * len(tasks)]
    for run in runs:
        curve = run["curve"]
        first, last = curve[0], curve[-1]
        reach = [minutes_to(curve, t) for t in args.targets]
        cells = ["not reached" if m is None else f"{m:.1f}" for m in reach]
        per_task = [f"{first['tasks'][k]:.2f} -> {last['tasks'][k]:.2f}" for k in tasks]
        lines.append(f"| {run['algorithm']} | {first['overall']:.3f} | {last['overall']:.3f} | "
                     f"{max(p['overall'] for p in curve):.3f} | " + " | ".join(cells) + " | " + " | ".join(per_task) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=["awm", "ddpo", "find"])
    parser.add_argument("--model", default="shapes-sd")
    parser.add_argument("--minutes", type=float, default=30.0, help="CPU-minutes of training per algorithm")
    parser.add_argument("--every", type=float, default=5.0, help="CPU-minutes between evaluations")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.6, 0.8])
    parser.add_argument("--steps", type=int, default=None, help="ShapesEval sampler steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="ShapesEval CFG (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-shapes-eval-curves"))
    args = parser.parse_args(argv)
    for name in ("minutes", "every"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be a positive number, got {getattr(args, name)}")
    if any(not 0 < t <= 1 for t in args.targets):
        parser.error(f"--targets must lie in (0, 1], got {args.targets}")
    for algorithm in args.algorithms:  # a bad --set fails before any model loads
        check_recipe(parser, algorithm, args.set, algorithm)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [run_algorithm(a, args) for a in args.algorithms]
    table = report(runs, args)
    (args.out / "results.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "runs": runs}, indent=2) + "\n")
    plot_curves({r["algorithm"]: r["curve"] for r in runs}, args.targets, args.out / "curves.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
