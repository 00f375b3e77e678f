"""``diffalign eval BENCHMARK --model NAME_OR_PATH``: sample, judge and report a benchmark.

The trained result goes on the model with ``--lora DIR`` or ``--run RUN_DIR [--checkpoint N]``
(:mod:`diffalign.trained`); ``--compare`` evaluates the base and the trained model with the same seeds
and writes one before/after table and grid (:mod:`diffalign.eval.compare`).

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
    "shapes-video": "VideoShapesEval: ShapesWorld in motion (directions, still objects, two objects), judged exactly",
    "geneval": "GenEval: 553 prompts, Mask2Former + CLIP colour rules (--model or --images DIR)",
    "vbench": "VBench: the official video prompts and dimensions (--videos DIR or --model M)",
}
ORACLE = "oracle"
FALLBACK_STEPS, FALLBACK_GUIDANCE = 20, 4.5


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    from diffalign.trained import add_trained_model_arguments

    add_trained_model_arguments(parser, model_help=f"shipped model name (shapes-sd, shapes-flow), diffusers folder or hub id "
                                f"(default: the run's model.source); '{ORACLE}' renders the ground truth")
    parser.add_argument("--compare", action="store_true",
                        help="with --lora or --run: evaluate the base model and the trained one with the same seeds, "
                             "into OUT/before and OUT/after, and write compare.md/.json and before_after.png")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/eval-BENCHMARK-MODEL-TIME)")
    parser.add_argument("--images-per-prompt", type=int, default=4, help="samples per prompt (default 4, as GenEval)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"sampler steps (default: the model's diffalign_defaults.json, else {FALLBACK_STEPS})")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help=f"classifier-free guidance scale (default: the model's diffalign_defaults.json, else {FALLBACK_GUIDANCE})")
    parser.add_argument("--seed", type=int, default=42, help="base seed; every image has its own seed derived from it")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampler call")
    parser.add_argument("--max-prompts-per-task", "--subset", dest="max_prompts_per_task", type=int, default=None, help="quick run: only the first N prompts of each task")
    parser.add_argument("--prompts", type=Path, default=None, help="prompt suite JSONL (default: the shipped shapes_eval_v1.jsonl, or video_shapes_eval_v1.jsonl for shapes-video)")
    parser.add_argument("--device", default=None, help="torch device for the model (default: the adapter's choice)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--no-images", action="store_true", help="do not write every sample as PNG (results and grid only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .geneval.cli import add_arguments as add_geneval_arguments

    add_geneval_arguments(parser)

    from .vbench.cli import add_arguments as add_vbench_arguments

    add_vbench_arguments(parser)


def model_sampling_defaults(model: str) -> dict[str, Any]:
    """The sampling defaults a ShapesWorld model folder ships (``diffalign_defaults.json``), else {}."""
    from diffalign.pipelines import shipped_model_path
    from diffalign.shapes.models import read_defaults

    folder = shipped_model_path(model) if not Path(model).is_dir() else Path(model)
    return read_defaults(folder) if folder is not None else {}


def load_sampler(args: argparse.Namespace) -> Any:
    """The model every benchmark samples from: ``--model`` with ``--lora``/``--run`` on it, or the oracle."""
    if args.model == ORACLE:
        if args.lora or args.run:
            raise ValueError(f"--model {ORACLE} renders the ground truth; it takes no --lora or --run")
        if getattr(args, "benchmark", None) == "shapes-video":
            from .video_shapes_eval import GroundTruthVideoSampler

            return GroundTruthVideoSampler()
        from .shapes_eval import GroundTruthSampler

        return GroundTruthSampler()
    from diffalign.trained import load_from_args

    return load_from_args(args)


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
    if args.benchmark == "vbench":
        from .vbench.cli import run as run_vbench

        return run_vbench(args)
    from diffalign.shapes.world import GrammarError
    from diffalign.trained import TrainedModelError, resolve_from_args

    from .benchmark import BenchmarkError
    from .shapes_eval import run_shapes_eval

    check_arguments(args)
    try:
        base, trained = resolve_from_args(args) if args.model != ORACLE else (ORACLE, None)
        if args.compare and trained is None:
            raise TrainedModelError("--compare needs the trained weights: --lora DIR or --run RUN_DIR")
    except TrainedModelError as err:
        print(f"diffalign eval: {err}", file=sys.stderr)
        return 2
    name = trained.label if trained is not None else base
    out = args.out or Path("runs") / f"eval-{args.benchmark}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[-80:]}-{time.strftime('%Y%m%d-%H%M%S')}"
    defaults = model_sampling_defaults(base) if base != ORACLE else {}
    steps = args.steps if args.steps is not None else defaults.get("num_inference_steps", FALLBACK_STEPS)
    guidance = args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale", FALLBACK_GUIDANCE)

    def evaluate(sampler: Any, folder: Path, model_name: str) -> dict[str, Any]:
        if args.benchmark == "shapes-video":
            from .video_shapes_eval import run_video_shapes_eval

            size = {k: defaults[k] for k in ("height", "width") if k in defaults}  # a video pipeline's own default is 480p
            return run_video_shapes_eval(
                sampler, folder, videos_per_prompt=args.images_per_prompt, frames=defaults.get("num_frames"), steps=steps, **size,
                guidance_scale=guidance, seed=args.seed, batch_size=args.batch_size,
                max_prompts_per_task=args.max_prompts_per_task, prompts=args.prompts, model_name=model_name,
                progress=not args.no_progress, resume=args.resume, save_videos=not args.no_images or args.compare,
            )
        return run_shapes_eval(
            sampler, folder, images_per_prompt=args.images_per_prompt, steps=steps, guidance_scale=guidance,
            seed=args.seed, batch_size=args.batch_size, max_prompts_per_task=args.max_prompts_per_task,
            prompts=args.prompts, model_name=model_name, progress=not args.no_progress, resume=args.resume,
            save_images=not args.no_images or args.compare,  # the before/after grid is made from the saved images
        )

    try:
        if args.compare:
            from .compare import evaluate_before_after

            result = evaluate_before_after(base, trained, evaluate, out, device=args.device,
                                           title=f"{BENCHMARKS[args.benchmark].split(':')[0]}: before and after training")
            print(result.paths["compare"].read_text())
            print(f"results in {out}: " + ", ".join(p.name for p in result.paths.values()))
            return 0
        sampler = load_sampler(args)
    except (BenchmarkError, GrammarError) as err:
        print(f"diffalign eval: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:  # TrainedModelError and AdapterError are ValueErrors
        print(f"diffalign eval: cannot load model {name!r}: {err}", file=sys.stderr)
        return 2
    try:
        summary = evaluate(sampler, out, name)
    except (BenchmarkError, GrammarError) as err:
        print(f"diffalign eval: {err}", file=sys.stderr)
        return 2
    print((Path(out) / "summary.md").read_text())
    print(f"results in {out} (overall {summary['overall']:.3f})")
    return 0
