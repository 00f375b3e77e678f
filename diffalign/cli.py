"""The ``diffalign`` command line: ``train``, ``score``, ``eval``, ``demo``, ``sample``, ``prefs``, ``runs``,
``render-videos``.

Each subcommand lives beside the code it drives, in a module exposing
``configure_parser(parser)`` and ``run(args) -> int``. A subcommand reports bad input by raising
:class:`diffalign.errors.UserError`; :func:`main` prints it as one line, ``diffalign <command>:
<message>``, and exits 2. Any other exception is an internal error: traceback, exit status 1.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from diffalign.errors import UserError

SUBCOMMANDS = {
    "train": ("diffalign.training.cli", "fine-tune a model from a TOML recipe"),
    "score": ("diffalign.scorers.cli", "score image and video files with scorer plugins"),
    "eval": ("diffalign.eval.cli", "run a benchmark (ShapesEval, GenEval-style, VBench-style)"),
    "demo": ("diffalign.demo", "evaluate, align and re-evaluate the shipped ShapesWorld model on CPU"),
    "sample": ("diffalign.sample", "sample an image grid from a model"),
    "prefs": ("diffalign.preferences.cli", "build, relabel and select preference data (pairs, labels, winners, experts)"),
    "runs": ("diffalign.runs", "list training runs: algorithm, epochs, held-out reward, resumable"),
    "render-videos": ("diffalign.shapes.video_dataset", "write rendered ShapesWorld-in-motion videos and captions to a folder"),
}


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffalign", description="Align diffusion models with preferences.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, (module_name, help_text) in SUBCOMMANDS.items():
        module = _module(module_name)
        sub_parser = sub.add_parser(command, help=help_text, description=help_text)
        if module is None:
            sub_parser.set_defaults(_run=lambda args, c=command: _not_available(c))
        else:
            module.configure_parser(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def _not_available(command: str) -> int:
    print(f"diffalign {command}: not yet available in this version", file=sys.stderr)
    return 2


def command_name(args: argparse.Namespace) -> str:
    """``train``, ``prefs build``, ...: what the one-line error messages start with."""
    return getattr(args, "_command_name", None) or args.command


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        print(f"diffalign {command_name(args)}: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
