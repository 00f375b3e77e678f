"""``diffalign demo``: diffalign's main job, end to end, on a laptop CPU in a few minutes.

1. Evaluate a shipped ShapesWorld model on a ShapesEval subset (the judge is exact, see
   :mod:`diffalign.shapes.judge`).
2. Align it online with the ShapesWorld judge as reward (``{algorithm}_shapes`` recipe, LoRA).
3. Evaluate again with the same prompts, seeds and sampler settings.
4. Write to the run folder: ``before_after.png`` (the same prompts and seeds, before | after),
   ``reward_curve.png``, ``summary.md``/``summary.json`` (per-task accuracy and judge score,
   before and after) and the training run (``train/``: config, metrics, checkpoints, LoRA).

From Python::

    from diffalign.demo import run_demo
    result = run_demo(out="runs/demo")
    print(result.summary["after"]["overall"])
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

#: algorithm -> (shipped model, training epochs): each recipe's tested rise on shapes-sd
#: (tests/test_trainer.py), a few CPU minutes on one thread (per epoch about 3-4 s for every algorithm).
#: All three run on shapes-sd: from the untrained shapes-flow model neither AWM's nor Flow-GRPO's update
#: directions agree across epochs (bench/gradient_agreement.py), so its demo would show noise.
DEMO_SETTINGS: dict[str, tuple[str, int]] = {
    "awm": ("shapes-sd", 30),
    "flow_grpo": ("shapes-sd", 40),
    "ddpo": ("shapes-sd", 30),
}
DEFAULT_ALGORITHM = "awm"
#: preference trainers: (shipped model, epochs) as above, and the data each builds under OUT/data first
DEMO_SETTINGS.update({"seppo": ("shapes-sd", 20), "dro": ("shapes-sd", 20)})
#: captions of the preference trainers' demo data (SePPO: 4 judged samples each; DRO: one rendered expert each)
DEMO_DATA_PROMPTS = {"seppo": 64, "dro": 256}


def _winners_data(folder: Path, model: str, seed: int) -> str:
    """``prefs build`` with the judge: the best of 4 samples of each caption (SePPO's winners)."""
    from diffalign import scorers
    from diffalign.pipelines import load
    from diffalign.preferences.build import build_preferences
    from diffalign.training.prompts import derive_seed, prompt_source

    prompts = prompt_source("shapes").draw(DEMO_DATA_PROMPTS["seppo"], derive_seed(seed, "demo-data"))
    build_preferences(load(model), prompts, scorers.load("shapes", mode="fraction"), folder, images_per_prompt=4,
                      steps=10, guidance_scale=1.0, seed=seed, batch_size=16)
    return str(folder / "winners.jsonl")


def _expert_data(folder: Path, model: str, seed: int) -> str:
    """``prefs experts``: the rendered ground truth of each caption (DRO's exact experts)."""
    from diffalign.preferences.build import shapes_experts
    from diffalign.training.prompts import derive_seed, prompt_source

    shapes_experts(prompt_source("shapes").draw(DEMO_DATA_PROMPTS["dro"], derive_seed(seed, "demo-data")), folder, seed=seed)
    return str(folder / "experts.jsonl")


#: algorithm -> writes its training data under a folder and returns data.source
DEMO_DATA = {"seppo": _winners_data, "dro": _expert_data}


@dataclass
class DemoResult:
    out: Path
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


def _summary_markdown(summary: dict[str, Any]) -> str:
    before, after = summary["before"], summary["after"]
    lines = [
        f"# diffalign demo: {summary['algorithm']} on {summary['model']}",
        "",
        f"ShapesEval subset: {summary['prompts_per_task']} prompts per task x {summary['images_per_prompt']} images, "
        f"{summary['eval_steps']} steps, guidance {summary['eval_guidance_scale']}; reward: ShapesWorld judge "
        f"(fraction of the caption's checks met); {summary['epochs']} training epochs in {summary['train_seconds']:.0f} s.",
        "",
        "| task | accuracy before | accuracy after | judge score before | judge score after |",
        "|---|---|---|---|---|",
    ]
    for task, b in before["tasks"].items():
        a = after["tasks"].get(task, {})
        lines.append(f"| {task} | {b['accuracy']:.3f} | {a.get('accuracy', float('nan')):.3f} "
                     f"| {b['score']:.3f} | {a.get('score', float('nan')):.3f} |")
    lines.append(f"| **overall** | **{before['overall']:.3f}** | **{after['overall']:.3f}** "
                 f"| **{before['overall_score']:.3f}** | **{after['overall_score']:.3f}** |")
    return "\n".join(lines) + "\n"


def _first_samples_by_task(run: Path) -> dict[str, list[Path]]:
    """Sample 0 of every prompt of a ShapesEval run folder, grouped by task, in suite order."""
    rows: dict[str, list[Path]] = {}
    for line in (run / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["sample_index"] == 0:
            rows.setdefault(row["tag"], []).append(run / row["filename"])
    return rows


def _before_after_image(before: Path, after: Path, path: Path, tile: int = 96) -> Path:
    """One row per task, one column per prompt (same seed): the base model's sample on the left
    panel, the aligned model's on the right."""
    from PIL import Image, ImageDraw

    left, right = _first_samples_by_task(before), _first_samples_by_task(after)
    tasks = [t for t in left if t in right]
    columns = max(len(left[t]) for t in tasks)
    label, gap, header, pad = 92, 16, 18, 2
    panel = columns * (tile + pad)
    canvas = Image.new("RGB", (label + 2 * panel + gap, header + len(tasks) * (tile + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label, 3), "before", fill="black")
    draw.text((label + panel + gap, 3), "after", fill="black")
    for r, task in enumerate(tasks):
        y = header + r * (tile + pad)
        draw.text((2, y + tile // 2 - 6), task, fill="black")
        for x0, files in ((label, left[task]), (label + panel + gap, right[task])):
            for c, file in enumerate(files):
                image = Image.open(file).convert("RGB").resize((tile, tile), Image.NEAREST)
                canvas.paste(image, (x0 + c * (tile + pad), y))
    canvas.save(path)
    return path


def run_demo(
    out: str | Path = "runs/demo",
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    model: str | None = None,
    epochs: int | None = None,
    prompts_per_task: int = 4,
    images_per_prompt: int = 2,
    seed: int = 0,
    overrides: Sequence[str] = (),
    progress: bool = True,
    log=print,
) -> DemoResult:
    """Evaluate, align and re-evaluate a ShapesWorld model; see the module docstring."""
    from diffalign.eval.shapes_eval import run_shapes_eval
    from diffalign.pipelines import load
    from diffalign.training.trainer import Trainer

    if algorithm not in DEMO_SETTINGS:
        raise ValueError(f"unknown demo algorithm {algorithm!r}; choose one of {sorted(DEMO_SETTINGS)}")
    default_model, default_epochs = DEMO_SETTINGS[algorithm]
    model = model or default_model
    epochs = default_epochs if epochs is None else epochs
    if epochs < 1 or prompts_per_task < 1 or images_per_prompt < 1:
        raise ValueError("epochs, prompts_per_task and images_per_prompt must be positive")
    out = Path(out)
    if (out / "summary.json").exists() or (out / "train" / "metrics.jsonl").exists():
        raise FileExistsError(f"{out} already holds a demo run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    if algorithm in DEMO_DATA:
        log(f"[0/4] building {algorithm}'s training data")
        overrides = [f"data.source={DEMO_DATA[algorithm](out / 'data', model, seed)}", *overrides]
    log(f"[1/4] loading {model}")
    adapter = load(model)
    trainer = Trainer(
        f"{algorithm}_shapes",
        overrides=[f"run.epochs={epochs}", f"run.seed={seed}", f"model.source={model}", "eval.at_start=false",
                   f"eval.every={max(1, epochs // 3)}", f"run.progress={str(progress).lower()}", f"run.checkpoint_every={epochs}", *overrides],
        adapter=adapter,
        run_dir=out / "train",
    )
    e = trainer.config.eval
    eval_kwargs = dict(
        images_per_prompt=images_per_prompt, steps=e.steps, guidance_scale=e.guidance_scale, seed=seed,
        max_prompts_per_task=prompts_per_task, model_name=model, progress=progress,
    )
    log(f"[2/4] ShapesEval before alignment ({prompts_per_task} prompts/task x {images_per_prompt} images)")
    # a fresh LoRA starts at zero, so this is the base model
    before = run_shapes_eval(adapter, out / "before", **eval_kwargs)
    log(f"      overall accuracy {before['overall']:.3f}, judge score {before['overall_score']:.3f}")

    log(f"[3/4] aligning with {algorithm} for {epochs} epochs (reward: ShapesWorld judge)")
    started = time.time()
    trainer.train()
    train_seconds = time.time() - started

    log("[4/4] ShapesEval after alignment")
    with trainer.ema_weights() if e.use_ema else contextlib.nullcontext():
        after = run_shapes_eval(adapter, out / "after", **eval_kwargs)
    log(f"      overall accuracy {after['overall']:.3f}, judge score {after['overall_score']:.3f}")

    summary = {
        "algorithm": algorithm, "model": model, "epochs": epochs, "seed": seed, "train_seconds": round(train_seconds, 1),
        "prompts_per_task": prompts_per_task, "images_per_prompt": images_per_prompt,
        "eval_steps": e.steps, "eval_guidance_scale": e.guidance_scale,
        "before": before, "after": after,
    }
    paths = {
        "summary": out / "summary.md",
        "before_after": _before_after_image(out / "before", out / "after", out / "before_after.png"),
        "reward_curve": trainer.plot_rewards(),
        "train": trainer.run_dir,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    paths["summary"].write_text(_summary_markdown(summary))
    trainer.close()
    return DemoResult(out=out, summary=summary, paths={k: v for k, v in paths.items() if v is not None})


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algorithm", choices=sorted(DEMO_SETTINGS), default=DEFAULT_ALGORITHM,
                        help=f"algorithm (default {DEFAULT_ALGORITHM}); each uses its *_shapes recipe")
    parser.add_argument("--model", default=None, help="ShapesWorld model: shipped name or folder (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: what fits a few CPU minutes)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/demo-TIME)")
    parser.add_argument("--prompts-per-task", type=int, default=4, help="ShapesEval prompts per task, before and after")
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value (repeatable), e.g. --set train.learning_rate=1e-4")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from diffalign.config import ConfigError

    out = args.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.time()
    try:
        result = run_demo(out, algorithm=args.algorithm, model=args.model, epochs=args.epochs,
                          prompts_per_task=args.prompts_per_task, images_per_prompt=args.images_per_prompt,
                          seed=args.seed, overrides=args.overrides, progress=not args.no_progress)
    except (ConfigError, FileExistsError, OSError, ValueError) as err:
        print(f"diffalign demo: {err}", file=sys.stderr)
        return 2
    print()
    print(result.paths["summary"].read_text())
    print(f"done in {time.time() - started:.0f} s; results in {result.out}:")
    for name, path in result.paths.items():
        print(f"  {name:13s} {path}")
    return 0
