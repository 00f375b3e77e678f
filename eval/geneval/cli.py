"""``diffalign eval geneval``: ``--model M`` generates GenEval's images and scores them; ``--images DIR``
scores a folder in GenEval's layout made elsewhere. The shared options (``--out``, ``--resume``,
``--steps``, ...) come from :mod:`diffalign.eval.cli`; the GenEval-only ones are added here."""
from __future__ import annotations

import argparse
import functools
import re
import sys
import time
from pathlib import Path

from .colors import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
from .detector import DEFAULT_DETECTOR
from .rules import GenEvalOptions

#: GenEval's reference protocol (``generation/diffusers_generate.py``)
STEPS, GUIDANCE = 50, 9.0
_FLOAT_OPTIONS = ("threshold", "counting_threshold", "max_overlap", "position_threshold")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("GenEval (diffalign eval geneval)")
    group.add_argument("--images", type=Path, default=None,
                       help="score this folder of GenEval images (00000/metadata.jsonl, 00000/samples/0000.png, ...) instead of --model")
    group.add_argument("--detector", default=DEFAULT_DETECTOR, help=f"Mask2Former COCO instance checkpoint: hub id or folder (default {DEFAULT_DETECTOR})")
    group.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help=f"open_clip model name or folder for the colour classifier (default {DEFAULT_CLIP_MODEL})")
    group.add_argument("--clip-pretrained", default=DEFAULT_CLIP_PRETRAINED, help=f"open_clip weights tag or file (default {DEFAULT_CLIP_PRETRAINED})")
    group.add_argument("--detector-scale", type=int, nargs=2, default=(1333, 800), metavar=("LONG", "SHORT"),
                       help="detector input size limits, as mmdet's test pipeline (default 1333 800)")
    group.add_argument("--scoring-device", default=None, help="device for the detector and CLIP (default: cuda if available)")
    group.add_argument("--scoring-batch-size", type=int, default=4, help="images per detector call (default 4)")
    group.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="GenEval --options: threshold, counting_threshold, max_objects, max_overlap, position_threshold, bgcolor, crop")


def parse_options(pairs: list[str]) -> tuple[GenEvalOptions, dict[str, object]]:
    """``KEY=VALUE`` pairs -> the rule options and the colour-classifier options (``bgcolor``, ``crop``)."""
    rules: dict[str, object] = {}
    colours: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not value:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            if key in _FLOAT_OPTIONS:
                rules[key] = float(value)
            elif key == "max_objects":
                rules[key] = int(value)
            elif key == "bgcolor":
                colours["background"] = value
            elif key == "crop":
                colours["crop"] = value == "1"
            else:
                raise ValueError(f"unknown key; use one of {[*_FLOAT_OPTIONS, 'max_objects', 'bgcolor', 'crop']}")
        except ValueError as err:
            raise ValueError(f"--option {pair!r}: {err}") from err
    return GenEvalOptions(**rules), colours


def run(args: argparse.Namespace) -> int:
    from diffalign.eval.benchmark import BenchmarkError, SamplingProtocol
    from diffalign.eval.cli import load_sampler, model_sampling_defaults

    from .colors import CLIPColorClassifier
    from .detector import Mask2FormerDetector
    from .harness import load_prompts, run_geneval, score_images

    def fail(message: str) -> int:
        print(f"diffalign eval: {message}", file=sys.stderr)
        return 2

    if (args.model is None and args.run is None) == (args.images is None):
        return fail("geneval needs exactly one of --model / --run (generate and score) or --images DIR (score a folder)")
    if args.no_images:
        return fail("geneval scores the PNG files it writes; --no-images does not apply")
    from diffalign.eval.cli import check_arguments

    check_arguments(args)  # the images folder itself is checked by score_images, before any model loads
    try:
        options, colour_options = parse_options(args.option)
        if args.scoring_batch_size < 1:
            raise ValueError(f"--scoring-batch-size must be positive, got {args.scoring_batch_size}")
        if args.prompts is not None:
            load_prompts(args.prompts)  # bad prompt files fail before any model loads
    except (ValueError, BenchmarkError) as err:
        return fail(str(err))
    detector = functools.partial(Mask2FormerDetector, args.detector, device=args.scoring_device, scale=tuple(args.detector_scale))
    colours = functools.partial(CLIPColorClassifier, args.clip_model, args.clip_pretrained, device=args.scoring_device, **colour_options)
    model = args.model
    if args.images is None and model is None:  # --run alone: its base model (files only, nothing loads)
        from diffalign.trained import resolve_from_args

        try:
            model = resolve_from_args(args)[0]
        except ValueError as err:
            return fail(str(err))
    name = (Path(args.run).name if args.run else model) if args.images is None else args.images.resolve().name
    out = args.out or Path("runs") / f"eval-geneval-{re.sub(r'[^A-Za-z0-9._-]+', '_', str(name))}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        if args.images is not None:
            summary = score_images(args.images, out, detector, colours, options, resume=args.resume,
                                   batch_size=args.scoring_batch_size, progress=not args.no_progress, title=f"GenEval — {args.images}")
        else:
            try:
                sampler = load_sampler(args)
            except (OSError, ValueError) as err:
                return fail(f"cannot load model {model!r}: {err}")
            defaults = model_sampling_defaults(model)
            protocol = SamplingProtocol(
                images_per_prompt=args.images_per_prompt,
                steps=args.steps if args.steps is not None else defaults.get("num_inference_steps", STEPS),
                guidance_scale=args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale", GUIDANCE),
                seed=args.seed,
                batch_size=args.batch_size,
            )
            summary = run_geneval(sampler, out, protocol=protocol, prompts=args.prompts, max_prompts_per_task=args.max_prompts_per_task,
                                  detector=detector, color_classifier=colours, options=options, model_name=str(name),
                                  resume=args.resume, progress=not args.no_progress, scoring_batch_size=args.scoring_batch_size)
    except BenchmarkError as err:
        return fail(str(err))
    except OSError as err:  # a detector or CLIP checkpoint that is not there
        return fail(f"cannot load a GenEval model: {err}")
    except ImportError as err:  # transformers' Mask2Former needs scipy
        return fail(f"GenEval needs an optional dependency (pip install 'diffalign[geneval]'): {str(err).strip()}")
    print((Path(out) / "summary.md").read_text())
    print(f"results in {out} (overall {summary['overall']:.4f})")
    return 0


__all__ = ["GUIDANCE", "STEPS", "add_arguments", "parse_options", "run"]
