"""``diffalign eval BENCHMARK --model NAME_OR_PATH``: sample, judge and report a benchmark.

``--model`` takes anything :func:`diffalign.pipelines.load` takes (a shipped model name such as
``shapes-sd``, a local diffusers folder, a hub id already in the local cache) or ``oracle``, which
renders the ground truth (the judge's upper bound).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

BENCHMARKS = {
    "shapes": "ShapesEval: GenEval's six tasks on ShapesWorld, judged exactly",
    "geneval": "GenEval: 553 prompts, Mask2Former + CLIP colour rules (--model or --images DIR)",
}
ORACLE = "oracle"
FALLBACK_STEPS, FALLBACK_GUIDANCE = 20, 4.5


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    parser.add_argument("--model", default=None, help=f"shipped model name (shapes-sd, shapes-flow), diffusers folder or hub id; '{ORACLE}' renders the ground truth")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/eval-BENCHMARK-MODEL-TIME)")
    parser.add_argument("--images-per-prompt", type=int, default=4, help="samples per prompt (default 4, as GenEval)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"sampler steps (default: the model's diffalign_defaults.json, else {FALLBACK_STEPS})")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help=f"classifier-free guidance scale (default: the model's diffalign_defaults.json, else {FALLBACK_GUIDANCE})")
    parser.add_argument("--seed", type=int, default=42, help="base seed; every image has its own seed derived from it")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampler call")
    parser.add_argument("--max-prompts-per-task", "--subset", dest="max_prompts_per_task", type=int, default=None, help="quick run: only the first N prompts of each task")
    parser.add_argument("--prompts", type=Path, default=None, help="prompt suite JSONL (default: the shipped shapes_eval_v1.jsonl)")
    parser.add_argument("--device", default=None, help="torch device for the model (default: the adapter's choice)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--no-images", action="store_true", help="do not write every sample as PNG (results and grid only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .geneval.cli import add_arguments as add_geneval_arguments

    add_geneval_arguments(parser)


def model_sampling_defaults(model: str) -> dict[str, Any]:
    """The sampling defaults a ShapesWorld model folder ships (``diffalign_defaults.json``), else {}."""
    from diffalign.pipelines import shipped_model_path
    from diffalign.shapes.models import read_defaults

    folder = shipped_model_path(model) if not Path(model).is_dir() else Path(model)
    return read_defaults(folder) if folder is not None else {}


def _sampler(model: str, device: str | None) -> Any:
    if model == ORACLE:
        from .shapes_eval import GroundTruthSampler

        return GroundTruthSampler()
    from diffalign.pipelines import load

    return load(model, device=device)


def load_sampler(args: argparse.Namespace) -> Any:
    """The model every benchmark samples from (``--model``, ``--device``)."""
    return _sampler(args.model, args.device)


def check_arguments(args: argparse.Namespace) -> None:
    """The options every benchmark shares: numbers in range, files and the model there (UserError otherwise)."""
    from diffalign.errors import MAX_STEPS, existing_path, model_source, number

    number(args.images_per_prompt, "--images-per-prompt", low=1, integer=True)
    number(args.batch_size, "--batch-size", low=1, integer=True)
    if args.steps is not None:
        number(args.steps, "--steps", low=1, high=MAX_STEPS, integer=True)
    if args.guidance_scale is not None:
        number(args.guidance_scale, "--guidance-scale", low=0)
    if args.max_prompts_per_task is not None:
        number(args.max_prompts_per_task, "--max-prompts-per-task", low=1, integer=True)
    if args.prompts is not None:
        existing_path(args.prompts, "--prompts file", kind="file")
    if args.model is not None and args.model != ORACLE:
        model_source(args.model)


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "geneval":
        from .geneval.cli import run as run_geneval

        return run_geneval(args)
    from diffalign.shapes.world import GrammarError

    from .benchmark import BenchmarkError
    from .shapes_eval import run_shapes_eval

    if args.model is None:
        print(f"diffalign eval: {args.benchmark} needs --model", file=sys.stderr)
        return 2
    check_arguments(args)
    out = args.out or Path("runs") / f"eval-{args.benchmark}-{re.sub(r'[^A-Za-z0-9._-]+', '_', args.model)}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        sampler = load_sampler(args)
    except (OSError, ValueError) as err:
        print(f"diffalign eval: cannot load model {args.model!r}: {err}", file=sys.stderr)
        return 2
    defaults = model_sampling_defaults(args.model) if args.model != ORACLE else {}
    steps = args.steps if args.steps is not None else defaults.get("num_inference_steps", FALLBACK_STEPS)
    guidance = args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale", FALLBACK_GUIDANCE)
    try:
        summary = run_shapes_eval(
            sampler,
            out,
            images_per_prompt=args.images_per_prompt,
            steps=steps,
            guidance_scale=guidance,
            seed=args.seed,
            batch_size=args.batch_size,
            max_prompts_per_task=args.max_prompts_per_task,
            prompts=args.prompts,
            model_name=args.model,
            progress=not args.no_progress,
            resume=args.resume,
            save_images=not args.no_images,
        )
    except (BenchmarkError, GrammarError) as err:
        print(f"diffalign eval: {err}", file=sys.stderr)
        return 2
    print((Path(out) / "summary.md").read_text())
    print(f"results in {out} (overall {summary['overall']:.3f})")
    return 0
