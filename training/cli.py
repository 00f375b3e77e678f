"""``diffalign train RECIPE [--set section.key=value ...] [--resume [RUN_DIR]] [--out DIR]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="a TOML recipe file or the name of a shipped recipe (e.g. awm_shapes)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable), e.g. --set train.learning_rate=1e-4")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                        help="resume from the newest checkpoint of RUN_DIR (default: the run folder)")
    parser.add_argument("--out", default=None, help="run folder (default: run.output_dir/run.name)")
    parser.add_argument("--list", action="store_true", help="list the shipped recipes and exit")


def run(args: argparse.Namespace) -> int:
    from diffalign.errors import UserError, existing_path

    from .checkpoint import find_latest_checkpoint, read_trainer_state
    from .trainer import Trainer, TrainingDivergedError, recipe_path, shipped_recipes

    if args.list:
        print("\n".join(shipped_recipes()))
        return 0
    recipe = args.recipe
    run_dir = args.out
    if args.resume:
        run_dir = run_dir or args.resume
        existing_path(args.resume, "--resume folder", kind="dir")
        latest = find_latest_checkpoint(args.resume)
        if latest is None:
            raise UserError(f"--resume {args.resume}: no complete checkpoint there (checkpoints/checkpoint-*); "
                            f"give a run folder that holds one, or start without --resume")
        read_trainer_state(latest)  # readable before the model loads
        if recipe is None:
            saved = Path(args.resume) / "config.toml"
            if not saved.exists():
                raise UserError(f"{args.resume} has no config.toml; give the recipe too")
            recipe = str(saved)
    if recipe is None:
        raise UserError("give a recipe (a .toml file or a shipped name; --list shows them)")
    if args.resume == "":  # resume the run folder itself: it must hold a checkpoint before the model loads
        from diffalign.config import load_config

        config = load_config(recipe_path(recipe), list(args.overrides))
        folder = Path(run_dir) if run_dir is not None else Path(config.run.output_dir) / config.run.name
        latest = find_latest_checkpoint(folder)
        if latest is None:
            raise UserError(f"--resume: the run folder {folder} holds no complete checkpoint; "
                            f"name the run to resume with --resume DIR or start without --resume")
        read_trainer_state(latest)
    trainer = Trainer(recipe_path(recipe), overrides=args.overrides, run_dir=run_dir)
    try:
        if args.resume is not None:
            trainer.resume(args.resume or None)
        trainer.train()
        trainer.close()
    except TrainingDivergedError as err:
        print(f"diffalign train: {err}", file=sys.stderr)
        return 3
    print(f"run folder: {trainer.run_dir}")
    print(f"next: diffalign sample --run {trainer.run_dir}; diffalign eval shapes --run {trainer.run_dir} --compare")
    return 0
