"""Full ShapesEval against CPU-minutes of training: the curve ``bench/shapes_eval_curves.py`` draws for every
algorithm and ``diffalign demo --long`` for one.

The budget is CPU time of this process (``time.process_time``: with one torch thread, minutes on one CPU
thread), counted over training only: the clock stops while the suite runs.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

__all__ = ["curve_point", "full_shapes_eval", "minutes_to", "move_aside", "plot_curves", "resume_curve",
           "train_for_minutes"]


def full_shapes_eval(trainer, out: Path, *, steps: int | None = None, guidance_scale: float | None = None,
                     save_images: bool = False, progress: bool = False) -> dict[str, Any]:
    """The whole suite (90 prompts x 4 images) on the trainer's current model at the model's sampling defaults
    (unless given), with the EMA weights where its recipe evaluates with them; ShapesEval's whole result.
    ``progress``: a bar over the suite's images."""
    from diffalign.eval.shapes_eval import run_shapes_eval
    from diffalign.sample import model_defaults

    defaults = model_defaults(trainer.adapter)
    steps = steps or defaults.get("num_inference_steps", 20)
    guidance = guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 4.0)
    context = trainer.ema_weights() if trainer.config.eval.use_ema else contextlib.nullcontext()
    with context, torch.no_grad():
        return run_shapes_eval(trainer.adapter, out, steps=steps, guidance_scale=guidance, progress=progress,
                               save_images=save_images)


def curve_point(result: dict[str, Any]) -> dict[str, Any]:
    """What a curve keeps of a ShapesEval result: the overall accuracy and each task's."""
    return {"overall": result["overall"], "tasks": {k: v["accuracy"] for k, v in result["tasks"].items()}}


def train_for_minutes(trainer, minutes: float, every: float, evaluate: Callable[[float, int, bool], dict],
                      curve_file: Path | None = None, log: Callable[[str], None] = print, *,
                      checkpoint: Callable[[], Any] | None = None, resumed: list[dict] | None = None) -> list[dict]:
    """Train one epoch at a time for ``minutes`` of CPU time; ``evaluate(minutes, epoch, last)`` runs at the
    start, every ``every`` minutes and at the end, and each point (``minutes``, ``epoch`` and what it returns)
    is appended to ``curve_file`` as it comes. ``checkpoint`` runs after every point but the last (e.g.
    ``trainer.save_checkpoint``); ``resumed``: the curve of an interrupted run whose last point is the
    trainer's restored state (its epoch and minutes), which training continues from."""
    if not minutes > 0 or not every > 0:
        raise ValueError(f"minutes and every must be positive, got {minutes} and {every}")
    curve: list[dict] = list(resumed or [])

    def record(spent: float, epoch: int, last: bool) -> None:
        point = {"minutes": spent, "epoch": epoch, **evaluate(spent, epoch, last)}
        curve.append(point)
        if curve_file is not None:
            with curve_file.open("a") as f:
                f.write(json.dumps(point) + "\n")
        log(f"{spent:5.1f} min, epoch {epoch}: ShapesEval {point['overall']:.3f}")
        if checkpoint is not None and not last:
            checkpoint()

    if curve:
        if curve[-1]["epoch"] != trainer.epoch:
            raise ValueError(f"the resumed curve ends at epoch {curve[-1]['epoch']}, the trainer is at {trainer.epoch}")
    else:
        record(0.0, trainer.epoch, False)
    cpu = curve[-1]["minutes"] * 60
    while cpu / 60 < minutes:
        started = time.process_time()
        trainer.train(epochs=1_000_000, stop_after=1, budget=f"{cpu / 60:.1f} of {minutes:g} CPU-minutes")
        cpu += time.process_time() - started
        done = cpu / 60 >= minutes
        # the next evaluation: the first multiple of ``every`` past the last point
        if cpu / 60 >= every * (int(curve[-1]["minutes"] / every) + 1) or done:
            record(cpu / 60, trainer.epoch, done)
    return curve


def move_aside(path: Path) -> Path:
    """Rename what an interrupted run left at ``path`` (a file or a folder) to the first free
    ``STEM.interruptedN[.SUFFIX]`` beside it, so a rerun never overwrites it; returns the new path."""
    kept = next(path.with_name(f"{path.stem}.interrupted{i}{path.suffix}") for i in range(1, 10_000)
                if not path.with_name(f"{path.stem}.interrupted{i}{path.suffix}").exists())
    return path.rename(kept)


def resume_curve(curve_file: Path, curve: list[dict], epoch: int, eval_root: Path, also: Sequence[Path] = ()) -> list[dict]:
    """The points of an interrupted run's curve up to ``epoch``, the epoch its newest checkpoint restored, which
    :func:`train_for_minutes` continues from (``resumed=``). The later points, evaluated on training the checkpoint
    does not hold, go to ``STEM.interrupted.jsonl`` beside ``curve_file``; the evaluation folders made after it
    (``eval_root / eval_NNNNN`` by epoch, and ``also``) are moved aside, never overwritten."""
    from diffalign.errors import UserError

    kept = [p for p in curve if p["epoch"] <= epoch]
    if not kept or kept[-1]["epoch"] != epoch:
        raise UserError(f"{curve_file} has no point at its newest checkpoint's epoch {epoch} "
                        f"(files were removed?); start the run again in another --out")
    later = [p for p in curve if p["epoch"] > epoch]
    if later:
        with curve_file.with_name(f"{curve_file.stem}.interrupted.jsonl").open("a") as f:
            f.writelines(json.dumps(p) + "\n" for p in later)
        curve_file.write_text("".join(json.dumps(p) + "\n" for p in kept))
    stale = [*also, *(f for f in eval_root.glob("eval_*") if f.name[5:].isdigit() and int(f.name[5:]) > epoch)]
    for folder in stale:
        if folder.exists():
            move_aside(folder)
    return kept


def minutes_to(curve: list[dict], target: float) -> float | None:
    """Minutes of the first evaluation at or above ``target`` (None: not reached)."""
    return next((p["minutes"] for p in curve if p["overall"] >= target), None)


def plot_curves(runs: dict[str, list[dict]], targets: list[float], path: Path) -> Path:
    """ShapesEval overall against training minutes, one line per run, dashed lines at the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in runs.items():
        ax.plot([p["minutes"] for p in curve], [p["overall"] for p in curve], marker="o", label=name)
    for target in targets:
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training minutes (one CPU thread)")
    ax.set_ylabel("ShapesEval overall")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
