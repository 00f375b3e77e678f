"""``diffalign runs list [DIR]``: the training runs in a folder, their progress and whether they resume.

A run is a folder holding ``config.toml`` (written by ``diffalign train``). For each: the algorithm,
epochs done of the configured total (the newest epoch in ``metrics.jsonl``), the last held-out reward
(``eval/reward_mean``), whether a complete checkpoint exists (``diffalign train --resume RUN_DIR``
continues from it) and whether ``final/`` weights exist (``--run RUN_DIR`` loads them).
"""
from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["RunInfo", "configure_parser", "find_runs", "format_runs", "run", "run_info"]


@dataclass
class RunInfo:
    path: Path
    algorithm: str
    base_model: str
    epochs_done: int
    epochs_total: int | None
    last_heldout: float | None
    heldout_epoch: int | None
    resumable_epoch: int | None
    final: bool
    problem: str = ""


def run_info(path: str | Path) -> RunInfo:
    """What a run folder holds; an unreadable file is reported in ``problem`` instead of raising."""
    from diffalign.training.checkpoint import find_latest_checkpoint, read_trainer_state

    path = Path(path)
    problem = ""
    try:
        config = tomllib.loads((path / "config.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        config, problem = {}, f"config.toml unreadable ({err})"
    run, model = config.get("run", {}), config.get("model", {})
    epochs_done, held, held_epoch = 0, None, None
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted write
            if "reward_mean" in row:
                epochs_done = max(epochs_done, int(row.get("epoch", 0)))
            if "eval/reward_mean" in row:
                held, held_epoch = float(row["eval/reward_mean"]), row.get("epoch")
    checkpoint = find_latest_checkpoint(path)
    resumable = None
    if checkpoint is not None:
        try:
            resumable = int(read_trainer_state(checkpoint)["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            resumable = int(checkpoint.name.split("_")[-1]) if checkpoint.name.startswith("epoch_") else 0
    final = path / "final"
    has_final = (final / "pytorch_lora_weights.safetensors").is_file() or (final / "denoiser.safetensors").is_file()
    return RunInfo(path=path, algorithm=str(run.get("algorithm") or "?"), base_model=str(model.get("source", "?")),
                   epochs_done=epochs_done, epochs_total=run.get("epochs"), last_heldout=held, heldout_epoch=held_epoch,
                   resumable_epoch=resumable, final=has_final, problem=problem)


def find_runs(directory: str | Path) -> list[RunInfo]:
    """The runs directly inside ``directory`` (or ``directory`` itself when it is one), by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: folder not found")
    if (directory / "config.toml").is_file():
        return [run_info(directory)]
    return [run_info(p) for p in sorted(directory.iterdir()) if p.is_dir() and (p / "config.toml").is_file()]


def format_runs(runs: list[RunInfo]) -> str:
    header = ("run", "algorithm", "model", "epochs", "held-out reward", "resume", "final")
    rows = [header]
    for r in runs:
        held = f"{r.last_heldout:.4f} (epoch {r.heldout_epoch})" if r.last_heldout is not None else "-"
        resume = f"yes (epoch {r.resumable_epoch})" if r.resumable_epoch is not None else "no"
        total = f"/{r.epochs_total}" if r.epochs_total is not None else ""
        rows.append((r.path.name + (f"  [{r.problem}]" if r.problem else ""), r.algorithm, r.base_model,
                     f"{r.epochs_done}{total}", held, resume, "yes" if r.final else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="runs_command", metavar="ACTION")
    listing = sub.add_parser("list", help="list the runs in a folder", description=__doc__.split("\n\n")[0])
    listing.add_argument("directory", nargs="?", default="runs", help="folder of run folders (default: runs)")
    listing.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "runs_command", None) != "list":
        print("diffalign runs: give an action: list [DIR]", file=sys.stderr)
        return 2
    try:
        runs = find_runs(args.directory)
    except FileNotFoundError as err:
        print(f"diffalign runs: {err}", file=sys.stderr)
        return 2
    if args.json:
        for r in runs:
            print(json.dumps({**asdict(r), "path": str(r.path)}))
        return 0
    if not runs:
        print(f"no runs in {args.directory} (a run folder holds config.toml)")
        return 0
    print(format_runs(runs))
    return 0
