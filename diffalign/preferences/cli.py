"""``diffalign prefs build|relabel|topk|experts``: make preference data.

Examples::

    diffalign prefs build --model shapes-sd --prompts shapes --num-prompts 256 --images-per-prompt 4 \\
        --scorer shapes --out data/shapes-prefs
    diffalign prefs relabel data/pickapic-subset --scorer pickscore --out data/relabelled
    diffalign prefs topk data/pickapic-subset --scorer hps --k 500 --out data/experts
    diffalign prefs experts --prompts shapes --num-prompts 500 --out data/shapes-experts

``build`` writes ``pairs.jsonl``, ``labels.jsonl``, ``winners.jsonl`` and ``scores.jsonl`` (and the PNGs under
``images/``); ``relabel`` writes ``pairs.jsonl``; ``topk`` writes ``experts.jsonl``; ``experts`` writes
``experts.jsonl`` of rendered ShapesWorld ground truth (exact experts). Every manifest is a
``data.source`` for training. Re-running ``relabel``/``topk`` into the same folder scores only what is missing;
``build --resume`` samples only the prompts not yet written. Exit status 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffalign.pipelines import PipelineAdapter


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scorer", "-s", required=True, metavar="SPEC",
                        help="scorer name or weighted spec, e.g. shapes, pickscore, 'pickscore:0.7,aesthetic:0.3'")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--device", default=None, help="device for the model and scorer (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=None, help="items sampled / scored together")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    sub = parser.add_subparsers(dest="prefs_command", metavar="COMMAND")
    build = sub.add_parser("build", help="sample N images per prompt, score them, write pairs / labels / winners")
    from diffalign.trained import add_trained_model_arguments

    add_trained_model_arguments(build, default_model="shapes-sd")  # --model, --lora, --lora-scale, --run, --checkpoint
    build.add_argument("--prompts", required=True, metavar="FILE|NAME",
                       help="a .txt/.jsonl prompt file, or a named source (shapes: ShapesWorld captions, animals)")
    build.add_argument("--num-prompts", type=int, default=None, help="prompts to use (default: every prompt of the file)")
    build.add_argument("--images-per-prompt", type=int, default=4, help="samples per prompt (>= 2)")
    build.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's diffalign_defaults.json)")
    build.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the model's)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--pairs", dest="pairing", choices=("best_worst", "every"), default="best_worst",
                       help="pairs: best vs worst sample of each prompt (default), or every two samples of a caption "
                            "whose scores differ")
    build.add_argument("--threshold", type=float, default=None,
                       help="labels: desirable when the score is above this (default: above the prompt's median)")
    build.add_argument("--resume", action="store_true", help="continue a build in --out (prompts already written are kept)")
    _common(build)
    relabel = sub.add_parser("relabel", help="AI-feedback relabelling of a pairs dataset (winner by score, soft labels)")
    relabel.add_argument("data", metavar="DATA", help="a data.source: Hugging Face dataset, parquet, manifest")
    relabel.add_argument("--split", default="train", help="dataset split (Hugging Face sources)")
    _common(relabel)
    topk = sub.add_parser("topk", help="the k best-scored images of a dataset as an experts manifest")
    topk.add_argument("data", metavar="DATA", help="a data.source: Hugging Face dataset, parquet, manifest")
    topk.add_argument("--k", type=int, default=500, help="how many experts (default: 500, Diffusion-DRO's)")
    topk.add_argument("--split", default="train", help="dataset split (Hugging Face sources)")
    _common(topk)
    experts = sub.add_parser("experts", help="ShapesWorld: the rendered ground truth of each caption as an experts manifest")
    experts.add_argument("--prompts", default="shapes", metavar="FILE|NAME", help="ShapesWorld captions, still or in motion "
                         "(default: shapes; shapes_video: motion captions, rendered as MP4s)")
    experts.add_argument("--frames", type=int, default=None,
                         help="frames of a motion caption's clip (default: 8; shapes-video takes 9)")
    experts.add_argument("--num-prompts", type=int, default=None, help="captions to render (default: every prompt of the file)")
    experts.add_argument("--seed", type=int, default=0)
    experts.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    for command, sub_parser in (("build", build), ("relabel", relabel), ("topk", topk), ("experts", experts)):
        sub_parser.set_defaults(_prefs_parser=sub_parser, _command_name=f"prefs {command}")
    parser.set_defaults(_prefs_help=parser.print_help)


def load_model(args: argparse.Namespace, device: str | None = None) -> "PipelineAdapter":
    """The adapter ``prefs build`` samples from: ``--model`` with ``--lora`` / ``--run`` weights on it."""
    from diffalign.trained import load_from_args

    args.device = device
    return load_from_args(args)


def _prompts(args: argparse.Namespace) -> list[str]:
    from diffalign.training.prompts import ListSource, prompt_source

    source = prompt_source(args.prompts)
    if isinstance(source, ListSource):
        count = args.num_prompts or len(source.prompts)
        if count > len(source.prompts):
            raise ValueError(f"--num-prompts {count}: {args.prompts} holds only {len(source.prompts)} prompts")
        return source.first(count)
    if not args.num_prompts:
        raise ValueError(f"--num-prompts is needed with the named prompt source {args.prompts!r}")
    return source.draw(args.num_prompts, args.seed)


def _check(args: argparse.Namespace) -> list[str]:
    from diffalign.errors import UserError, model_source, scorer_spec
    from diffalign.scorers import SCORERS, parse_spec

    problems = []
    if args.prefs_command == "experts":
        if args.num_prompts is not None and args.num_prompts < 1:
            problems.append(f"--num-prompts must be >= 1, got {args.num_prompts}")
        if args.frames is not None:
            from diffalign.shapes.motion import FRAME_RANGE

            if not FRAME_RANGE[0] <= args.frames <= FRAME_RANGE[1]:
                problems.append(f"--frames must be in [{FRAME_RANGE[0]}, {FRAME_RANGE[1]}], got {args.frames}")
        return problems
    try:
        unknown = [name for name, _ in parse_spec(args.scorer) if name not in SCORERS]
        if unknown:
            problems.append(f"unknown scorer {', '.join(unknown)} (see diffalign score --list)")
        else:
            scorer_spec(args.scorer)  # its weights are there (a hub id must be cached while offline)
    except ValueError as err:
        problems.append(str(err))
    if args.prefs_command == "build":
        model = args.model if args.model is not None or args.run else args._default_model  # --run: its model.source
        try:
            if model is not None:
                model_source(model)
        except UserError as err:
            problems.append(str(err))
    if args.batch_size is not None and args.batch_size < 1:
        problems.append(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.prefs_command == "build":
        if args.num_prompts is not None and args.num_prompts < 1:
            problems.append(f"--num-prompts must be >= 1, got {args.num_prompts}")
        if args.images_per_prompt < 2:
            problems.append(f"--images-per-prompt must be >= 2 to compare samples, got {args.images_per_prompt}")
        if args.steps is not None and args.steps < 1:
            problems.append(f"--steps must be >= 1, got {args.steps}")
        for name in ("guidance_scale", "threshold"):
            value = getattr(args, name)
            if value is not None and not math.isfinite(value):
                problems.append(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if Path(args.out).exists() and any(Path(args.out).iterdir()) and not args.resume:
            problems.append(f"{args.out} is not empty; pass --resume to continue the build there or use another --out")
    if args.prefs_command == "topk" and args.k < 1:
        problems.append(f"--k must be >= 1, got {args.k}")
    return problems


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "prefs_command", None)
    if not command:
        args._prefs_help()
        return 1
    name = f"diffalign prefs {command}"
    problems = _check(args)
    if problems:
        from diffalign.errors import UserError

        raise UserError("; ".join(problems))
    from diffalign.media import MediaError
    from diffalign.scorers import load as load_scorer

    from .build import build_preferences, open_dataset, relabel_preferences, shapes_experts, topk_preferences
    from .config import DataConfig

    device = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    progress = not getattr(args, "no_progress", False)
    try:
        if command == "experts":
            summary = shapes_experts(_prompts(args), args.out, seed=args.seed, frames=args.frames)
            print(f"{summary['experts']} ground-truth experts -> {Path(args.out) / 'experts.jsonl'}")
        elif command == "build":
            prompts = _prompts(args)  # before anything heavy loads
            scorer = load_scorer(args.scorer).to(device)
            adapter = load_model(args, device=device)
            summary = build_preferences(
                adapter, prompts, scorer, args.out, images_per_prompt=args.images_per_prompt, steps=args.steps,
                guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size or 8,
                threshold=args.threshold, pairing=args.pairing, resume=args.resume, progress=progress,
                settings={"model": args.model, "lora": args.lora, "lora_scale": args.lora_scale, "run": args.run,
                          "checkpoint": args.checkpoint, "prompts": args.prompts},
            )
            print(f"{summary['prompts']} prompts, {summary['images']} images ({summary['failed']} failed): "
                  f"{summary['pairs']} pairs ({summary['ties']} ties dropped), {summary['desirable']} of "
                  f"{summary['labels']} labels desirable, {summary['winners']} winners -> {args.out}")
        else:
            kinds = ("pairs",) if command == "relabel" else ("labels", "winners")
            data = open_dataset(DataConfig(source=args.data, split=args.split), kinds)  # before the scorer loads
            scorer = load_scorer(args.scorer).to(device)
            if command == "relabel":
                summary = relabel_preferences(data, scorer, args.out, batch_size=args.batch_size or 16, progress=progress)
                print(f"{summary['pairs']} of {summary['pairs_in']} pairs relabelled ({summary['flipped']} flipped, "
                      f"{summary['ties']} ties dropped, {len(summary['failed'])} failed) -> {Path(args.out) / 'pairs.jsonl'}")
            else:
                summary = topk_preferences(data, scorer, args.k, args.out, batch_size=args.batch_size or 16, progress=progress)
                print(f"top {summary['experts']} of {summary['items']} images (score >= {summary['threshold']}) "
                      f"-> {Path(args.out) / 'experts.jsonl'}")
        for failure in summary.get("failed", [])[:10] if isinstance(summary.get("failed"), list) else []:
            print(f"  skipped {failure['row_id']}: {failure['reason']}")
    except (ValueError, KeyError, OSError, MediaError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{name}: {message}", file=sys.stderr)
        return 2
    return 0
