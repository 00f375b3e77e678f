"""``diffalign score PATH... --scorer NAME[,NAME] --out FILE``: score image and video files.

Examples::

    diffalign score samples/ --scorer pickscore,aesthetic --prompts prompts.jsonl --out scores.csv
    diffalign score "runs/*/videos/*.mp4" --scorer critic --set critic.url=http://localhost:8000/v1 --out v.jsonl
    diffalign score --list

Exit status: 0 when every file was scored, 1 when any file failed (see the ``error`` column and
``<out>.summary.json``), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import sys
from typing import Any

from diffalign.errors import UserError
from diffalign.media import MediaError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image/video files, folders (recursive) or glob patterns")
    parser.add_argument(
        "--scorer", "-s", action="append", default=[], metavar="NAMES",
        help="comma-separated scorer names, one column each (repeatable); a weighted spec like "
        "'pickscore:0.7,aesthetic:0.3' is one column",
    )
    parser.add_argument("--out", "-o", metavar="FILE", help="results file: .csv, .jsonl or .parquet (re-runs resume it)")
    parser.add_argument("--prompts", metavar="FILE", help="JSONL/CSV with file (or path) and prompt columns; default: sidecar .txt files")
    parser.add_argument("--device", default=None, help="device for the scorers, e.g. cuda, cuda:1, cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="files loaded and scored together (default: the scorers' batch size)")
    parser.add_argument("--video-frames", type=int, default=None, help="evenly spaced frames kept per video (default: all)")
    parser.add_argument(
        "--set", dest="options", action="append", default=[], metavar="COLUMN.KEY=VALUE",
        help="an option for one scorer column, e.g. --set critic.url=http://host:8000/v1 --set pickscore.dtype=bf16",
    )
    parser.add_argument("--retry-failed", action="store_true", help="score again the files whose earlier row has an error")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list", action="store_true", help="list the registered scorers and exit")


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["critic.url=http://x", "critic.retries=3"]`` -> ``{"critic": {"url": "http://x", "retries": 3}}``."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        column, dot, name = key.rpartition(".")
        if not sep or not dot or not column or not name:
            raise UserError(f"--set {item!r}: expected COLUMN.KEY=VALUE, e.g. critic.url=http://localhost:8000/v1")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a plain string
        options.setdefault(column, {})[name] = value
    return options


def list_registered() -> list[tuple[str, str, str]]:
    """(name, modality, first docstring line) of every registered scorer."""
    from diffalign.scorers import SCORERS, list_scorers

    listing = []
    for name in list_scorers():
        factory = SCORERS.get(name)
        modality = getattr(factory, "modality", "?") if inspect.isclass(factory) else "?"
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        listing.append((name, modality, doc[0] if doc else ""))
    return listing


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_summary(summary: dict, out: str) -> None:
    print(
        f"{summary['files']} file(s) in {out}: {summary['ok']} ok, {summary['failed']} failed "
        f"({summary['scored_now']} scored now, {summary['already_done']} already done)"
    )
    width = max([len(c) for c in summary["scorers"]] + [6])
    print(f"{'scorer':<{width}}  {'mean':>10}  {'std':>10}  {'min':>10}  {'max':>10}  {'count':>6}")
    for column, stats in summary["scorers"].items():
        print(
            f"{column:<{width}}  {_fmt(stats['mean']):>10}  {_fmt(stats['std']):>10}  "
            f"{_fmt(stats['min']):>10}  {_fmt(stats['max']):>10}  {stats['count']:>6}"
        )
    if summary["failures"]:
        print("failed:")
        for failure in summary["failures"]:
            error = failure["error"].removeprefix(f"{failure['file']}: ")  # media errors already name the file
            print(f"  {failure['file']}: {error}")
    if summary["skipped"]:
        print("skipped (not image or video files):")
        for path in summary["skipped"]:
            print(f"  {path}")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name, modality, doc in list_registered():
            print(f"{name:<24} {modality:<6} {doc}")
        return 0
    problems = []
    if not args.paths:
        problems.append("give at least one PATH")
    if not args.scorer:
        problems.append("give --scorer (see --list)")
    if not args.out:
        problems.append("give --out FILE (.csv, .jsonl or .parquet)")
    if problems:
        print("diffalign score: " + "; ".join(problems), file=sys.stderr)
        return 2

    from diffalign.scorers.batch import score_files

    try:
        result = score_files(
            args.paths,
            args.scorer,
            prompts=args.prompts,
            out=args.out,
            device=args.device,
            batch_size=args.batch_size,
            video_frames=args.video_frames,
            retry_failed=args.retry_failed,
            scorer_options=parse_options(args.options),
            progress=not args.no_progress,
        )
    except (ValueError, KeyError, FileNotFoundError, MediaError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"diffalign score: {message}", file=sys.stderr)
        return 2
    print_summary(result.summary, args.out)
    print(f"summary: {args.out}.summary.json")
    return 0 if result.ok else 1
