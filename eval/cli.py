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
    "vbench": "VBench: the official video prompts and dimensions (--videos DIR or --model M)",
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
    from .vbench.cli import add_arguments as add_vbench_arguments

    add_vbench_arguments(parser)


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


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "vbench":
        from .vbench.cli import run as run_vbench

        return run_vbench(args)
    if args.model is None:
        print(f"diffalign eval: {args.benchmark} needs --model", file=sys.stderr)
        return 2
    from diffalign.shapes.world import GrammarError

    from .benchmark import BenchmarkError
    from .shapes_eval import run_shapes_eval

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
