"""``diffalign demo``: diffalign's main job, end to end, on a laptop CPU in a few minutes.

1. Evaluate a shipped ShapesWorld model on a ShapesEval subset (the judge is exact, see
   :mod:`diffalign.shapes.judge`).
2. Align it with the ``{algorithm}_shapes`` recipe (LoRA): online with the ShapesWorld judge as reward
   (AWM, DDPO, Flow-GRPO; FIND trains a per-prompt initial-noise law of the frozen model instead), with the
   reward's gradient through the last sampler steps on the differentiable ShapesWorld reward model (DRaFT,
   AlignProp, ReFL), or, for the preference trainers (DPO, KTO, SmPO), offline on preference data
   the demo builds first from the model's own samples, labelled by the judge (``diffalign prefs build``).
3. Evaluate again with the same prompts, seeds and sampler settings.
4. Write to the run folder: ``before_after.png`` (the same prompts and seeds, before | after),
   ``reward_curve.png``, ``summary.md``/``summary.json`` (per-task accuracy and judge score,
   before and after) and the training run (``train/``: config, metrics, checkpoints, LoRA).

``--long`` (:func:`run_long_demo`) trains for a budget of CPU-minutes instead, with the full ShapesEval every
few minutes: the per-task table, the curve against minutes and the whole suite's captioned before/after grid;
``--resume`` continues an interrupted one from its last evaluation.

From Python::

    from diffalign.demo import run_demo
    result = run_demo(out="runs/demo")
    print(result.summary["after"]["overall"])
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

#: algorithm -> (shipped model, training epochs): each recipe's tested rise on shapes-sd
#: (tests/test_trainer.py, tests/test_preference_trainers.py), a few CPU minutes on one thread.
#: All run on shapes-sd: from the untrained shapes-flow model neither AWM's nor Flow-GRPO's update
#: directions agree across epochs (bench/gradient_agreement.py), so its demo would show noise.
DEMO_SETTINGS: dict[str, tuple[str, int]] = {
    "awm": ("shapes-sd", 30),
    "flow_grpo": ("shapes-sd", 40),
    "ddpo": ("shapes-sd", 30),
    "dpo": ("shapes-sd", 20),
    "kto": ("shapes-sd", 20),
    "smpo": ("shapes-sd", 20),
}
#: preference algorithm -> the manifest of ``diffalign prefs build`` it trains on
PREFERENCE_DATA = {"dpo": "pairs.jsonl", "kto": "labels.jsonl", "smpo": "pairs.jsonl"}
#: the demo's preference data: prompts, samples per prompt, sampler steps (no CFG, as the recipes evaluate)
PREFERENCE_PROMPTS, PREFERENCE_IMAGES, PREFERENCE_STEPS = 192, 4, 10
DEFAULT_ALGORITHM = "awm"
#: preference trainers: (shipped model, epochs) as above, and the data each builds under OUT/data first
DEMO_SETTINGS.update({"seppo": ("shapes-sd", 20), "dro": ("shapes-sd", 80), "find": ("shapes-sd", 30)})
#: reward backpropagation on the differentiable ``shapes_reward`` (the judge stays the held-out measure)
DEMO_SETTINGS.update({"draft": ("shapes-sd", 20), "alignprop": ("shapes-sd", 20), "refl": ("shapes-sd", 20)})
#: recipe overrides of an algorithm's demo: FIND's recipe trains one prompt; the demo evaluates ShapesEval's
#: prompts, so it trains the multi-prompt variant (one noise law per prompt from its embedding)
DEMO_OVERRIDES: dict[str, list[str]] = {"find": ["prompts.train_list=[]", "find.per_prompt=true", "sampling.group_size=4",
                                                 "find.value_steps=20", "find.value_learning_rate=1e-2", "find.kl_weight=1.0"]}
#: ``--video``: algorithm -> (shipped video model, epochs); IPO's three rounds of two epochs (ipo_shapes_video)
VIDEO_DEMO_SETTINGS: dict[str, tuple[str, int]] = {"ipo": ("shapes-video", 6)}
#: captions of the demo data of DRO (its experts) and SePPO (its winners): one rendered ground truth each
DEMO_DATA_PROMPTS = {"dro": 1280, "seppo": 1280}


def _expert_data(algorithm: str):
    def build(folder: Path, model: str, seed: int) -> str:
        """``prefs experts``: the rendered ground truth of each caption (exact experts, or winners)."""
        from diffalign.preferences.build import shapes_experts
        from diffalign.training.prompts import derive_seed, prompt_source

        prompts = prompt_source("shapes").draw(DEMO_DATA_PROMPTS[algorithm], derive_seed(seed, "demo-data"))
        shapes_experts(prompts, folder, seed=seed)
        return str(folder / "experts.jsonl")
    return build


#: algorithm -> writes its training data (not built from the model's samples) under a folder, returns data.source
DEMO_DATA = {"dro": _expert_data("dro"), "seppo": _expert_data("seppo")}


@dataclass
class DemoResult:
    out: Path
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


def describe_reward(spec: str, options: dict[str, Any]) -> str:
    """The reward in words, as the run configured it."""
    if spec == "shapes":
        return "ShapesWorld judge (" + ("fraction of the caption's checks met" if options.get("mode", "fraction") == "fraction"
                                        else f"mode {options['mode']}") + ")"
    return f"{spec}" + (f" {options}" if options else "")


def _summary_markdown(summary: dict[str, Any]) -> str:
    from diffalign.eval.compare import comparison_table

    feedback = (f"preference data: {summary['preference_data']}" if summary.get("preference_data")
                else f"reward: {summary['reward']}")
    samples = "videos" if summary.get("video") else "images"
    lines = [
        f"# diffalign demo: {summary['algorithm']} on {summary['model']}",
        "",
        f"{summary.get('benchmark', 'ShapesEval')} subset: {summary['prompts_per_task']} prompts per task x "
        f"{summary['images_per_prompt']} {samples}, "
        f"{summary['eval_steps']} steps, guidance {summary['eval_guidance_scale']}; {feedback}; "
        f"{summary['epochs']} training epochs in {summary['train_seconds']:.0f} s.",
        "",
        *comparison_table(summary["before"], summary["after"]),
    ]
    return "\n".join(lines) + "\n"


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
    preference_prompts: int = PREFERENCE_PROMPTS,
    video: bool = False,
) -> DemoResult:
    """Evaluate, align and re-evaluate a ShapesWorld model; see the module docstring. ``video``: IPO on
    ``shapes-video``, evaluated on VideoShapesEval, with ``before_after.mp4`` beside the grid."""
    from diffalign.config import load_config
    from diffalign.errors import OutputExistsError, known_name, model_source, number
    from diffalign.eval.compare import before_after_grid, before_after_video
    from diffalign.pipelines import load
    from diffalign.training.trainer import Trainer, recipe_path

    video = video or algorithm in VIDEO_DEMO_SETTINGS
    settings = VIDEO_DEMO_SETTINGS if video else DEMO_SETTINGS
    if video and algorithm == DEFAULT_ALGORITHM:
        algorithm = "ipo"
    known_name(algorithm, settings, "video demo algorithm" if video else "demo algorithm")
    default_model, default_epochs = settings[algorithm]
    model = model or default_model
    epochs = default_epochs if epochs is None else epochs
    number(epochs, "epochs", low=1, integer=True)
    number(prompts_per_task, "prompts_per_task", low=1, integer=True)
    number(images_per_prompt, "images_per_prompt", low=1, integer=True)
    number(seed, "seed", low=0, integer=True)
    number(preference_prompts, "preference_prompts", low=1, integer=True)
    out = Path(out)
    if (out / "summary.json").exists() or (out / "train" / "metrics.jsonl").exists():
        raise OutputExistsError(f"{out} already holds a demo run; choose another --out")
    model_source(model)
    recipe = recipe_path(f"{algorithm}_shapes_video" if video else f"{algorithm}_shapes")
    train_overrides = [f"run.epochs={epochs}", f"run.seed={seed}", f"model.source={model}", "eval.at_start=false",
                       f"eval.every={max(1, epochs // 3)}", f"run.progress={str(progress).lower()}",
                       f"run.checkpoint_every={epochs}", *DEMO_OVERRIDES.get(algorithm, []), *overrides]
    config = load_config(recipe, train_overrides)  # a bad --set fails before the model loads
    out.mkdir(parents=True, exist_ok=True)

    if algorithm in DEMO_DATA:
        log(f"[0/4] building {algorithm}'s training data")
        train_overrides.append(f"data.source={DEMO_DATA[algorithm](out / 'data', model, seed)}")
    log(f"[1/4] loading {model}")
    adapter = load(model)
    preference_data = None
    if algorithm in PREFERENCE_DATA:  # labelled by the run's reward (the judge unless overridden)
        manifest, preference_data = build_shapes_preference_data(
            adapter, out / "data", algorithm, preference_prompts, seed, progress, log, config.reward.spec, config.reward.options)
        train_overrides.append(f"data.source={manifest}")
    trainer = Trainer(recipe, overrides=train_overrides, adapter=adapter, run_dir=out / "train")
    e = trainer.config.eval
    eval_kwargs = dict(steps=e.steps, guidance_scale=e.guidance_scale, seed=seed,
                       max_prompts_per_task=prompts_per_task, model_name=model, progress=progress)
    if video:
        from diffalign.eval.video_shapes_eval import NAME as benchmark, run_video_shapes_eval

        frames, fps = e.num_frames or trainer.config.sampling.num_frames, e.fps or trainer.config.sampling.fps
        sampling = trainer.config.sampling
        evaluate = lambda folder: run_video_shapes_eval(  # noqa: E731
            adapter, folder, videos_per_prompt=images_per_prompt, frames=frames, height=sampling.height, width=sampling.width,
            **eval_kwargs)
    else:
        from diffalign.eval.shapes_eval import NAME as benchmark, run_shapes_eval

        evaluate = lambda folder: run_shapes_eval(adapter, folder, images_per_prompt=images_per_prompt, **eval_kwargs)  # noqa: E731
    samples = "videos" if video else "images"
    log(f"[2/4] {benchmark} before alignment ({prompts_per_task} prompts/task x {images_per_prompt} {samples})")
    # a fresh LoRA starts at zero (and a fresh noise law is N(0, I)), so this is the base model
    before = evaluate(out / "before")
    log(f"      overall accuracy {before['overall']:.3f}, judge score {before['overall_score']:.3f}")

    reward = describe_reward(trainer.config.reward.spec, trainer.config.reward.options)
    log(f"[3/4] aligning with {algorithm} for {epochs} epochs ("
        + (f"preference data: {preference_data}" if preference_data else f"reward: {reward}") + ")")
    started = time.time()
    trainer.train()
    train_seconds = time.time() - started

    log(f"[4/4] {benchmark} after alignment")
    with trainer.ema_weights() if e.use_ema else contextlib.nullcontext():
        after = evaluate(out / "after")
    log(f"      overall accuracy {after['overall']:.3f}, judge score {after['overall_score']:.3f}")

    summary = {
        "algorithm": algorithm, "model": model, "epochs": epochs, "seed": seed, "train_seconds": round(train_seconds, 1),
        "prompts_per_task": prompts_per_task, "images_per_prompt": images_per_prompt,
        "eval_steps": e.steps, "eval_guidance_scale": e.guidance_scale, "reward": reward,
        "preference_data": preference_data, "benchmark": benchmark, "video": video, "before": before, "after": after,
    }
    paths = {
        "summary": out / "summary.md",
        "before_after": before_after_grid(out / "before", out / "after", out / "before_after.png"),
        "before_after_video": before_after_video(out / "before", out / "after", out / "before_after.mp4", fps=fps) if video else None,
        "reward_curve": trainer.plot_rewards(),
        "train": trainer.run_dir,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    paths["summary"].write_text(_summary_markdown(summary))
    trainer.close()
    return DemoResult(out=out, summary=summary, paths={k: v for k, v in paths.items() if v is not None})


#: ``--long``: the ShapesEval jump (full suite, minutes of one CPU thread), for the recipes that need no data built
LONG_DEMO_ALGORITHMS = ("awm", "ddpo", "flow_grpo", "find", "draft", "alignprop", "refl")
LONG_DEMO_TARGETS = (0.6, 0.8)


def run_long_demo(
    out: str | Path = "runs/demo-long",
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    model: str = "shapes-sd",
    minutes: float = 30.0,
    every: float = 5.0,
    seed: int = 0,
    eval_steps: int | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    progress: bool = True,
    log=print,
) -> DemoResult:
    """``diffalign demo --long``: train ``algorithm``'s ``*_shapes`` recipe for ``minutes`` of this process's CPU
    time, with the full ShapesEval (90 prompts x 4 images, the model's sampling defaults unless ``eval_steps``)
    at the start, every ``every`` minutes and at the end. Writes ``summary.md``/``summary.json`` (each task
    before and after, minutes to 0.6 and 0.8), ``curve.jsonl``, ``curve.png`` and ``before_after.png`` (the
    whole suite, each image captioned with its prompt and the judge's verdict).

    The training state is checkpointed after every evaluation; ``resume`` continues an interrupted run in
    ``out`` (the same settings) from its last evaluated point, and a point or an evaluation folder made after
    it is moved aside (``*.interrupted*``), not overwritten. ``progress``: a bar over each evaluation's images."""
    from diffalign.config import load_config
    from diffalign.errors import OutputExistsError, known_name, model_source, number, read_json
    from diffalign.eval.compare import before_after_grid, comparison_table
    from diffalign.eval.curves import (curve_point, full_shapes_eval, minutes_to, plot_curves, resume_curve,
                                       train_for_minutes)
    from diffalign.pipelines import load
    from diffalign.training.trainer import Trainer, recipe_path

    known_name(algorithm, LONG_DEMO_ALGORITHMS, "long demo algorithm")
    number(minutes, "minutes", low=0, low_open=True)
    number(every, "every", low=0, low_open=True)
    number(seed, "seed", low=0, integer=True)
    if eval_steps is not None:
        number(eval_steps, "eval_steps", low=1, integer=True)
    out = Path(out)
    settings = {"algorithm": algorithm, "model": model, "minutes": minutes, "every": every, "seed": seed,
                "eval_steps": eval_steps, "overrides": list(overrides)}
    if (out / "summary.json").exists():
        raise OutputExistsError(f"{out} already holds a finished demo run; choose another --out")
    if resume:
        resumed = _resumable_long_run(out, settings)
    elif (out / "curve.jsonl").exists():
        raise OutputExistsError(f"{out} already holds an unfinished demo --long run: add --resume to continue it, "
                                f"or choose another --out")
    model_source(model)
    recipe = recipe_path(f"{algorithm}_shapes")
    train_overrides = [f"model.source={model}", f"run.seed={seed}", "run.epochs=1000000", "eval.every=0",
                       "eval.at_start=false", "run.checkpoint_every=0", "run.progress=false",
                       *DEMO_OVERRIDES.get(algorithm, []), *overrides]
    load_config(recipe, train_overrides)  # a bad --set fails before the model loads
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    log(f"loading {model}; {algorithm} for {minutes:g} CPU-minutes, full ShapesEval every {every:g}")
    trainer = Trainer(recipe, overrides=train_overrides, adapter=load(model), run_dir=out / "train")
    curve_so_far = None
    ends: dict[str, dict] = {}  # the whole results of the first and last evaluations, for the table
    if resume:
        checkpoint = trainer.resume()
        curve_so_far = resume_curve(out / "curve.jsonl", resumed, trainer.epoch, out / "curve", also=[out / "after"])
        ends["before"] = read_json(out / "before" / "summary.json", "demo --long start")
        log(f"resuming from {checkpoint} at {curve_so_far[-1]['minutes']:.1f} CPU-minutes (epoch {trainer.epoch})")

    def evaluate(spent: float, epoch: int, last: bool) -> dict:
        end = "before" if epoch == 0 else "after" if last else None
        folder = out / end if end else out / "curve" / f"eval_{epoch:05d}"
        result = full_shapes_eval(trainer, folder, steps=eval_steps, save_images=end is not None, progress=progress)
        if end:
            ends[end] = result
        return curve_point(result)

    curve = train_for_minutes(trainer, minutes, every, evaluate, out / "curve.jsonl", log=log,
                              checkpoint=trainer.save_checkpoint, resumed=curve_so_far)
    trainer.close()
    before, after = curve[0], curve[-1]
    reached = {str(t): minutes_to(curve, t) for t in LONG_DEMO_TARGETS}
    summary = {"algorithm": algorithm, "model": model, "minutes": minutes, "every": every, "seed": seed,
               "epochs": after["epoch"], "before": before, "after": after, "minutes_to": reached, "curve": curve}
    lines = [f"# diffalign demo --long: {algorithm} on {model}", "",
             f"Full ShapesEval (90 prompts x 4 images) against {minutes:g} CPU-minutes of training "
             f"({after['epoch']} epochs); minutes to " + ", ".join(
                 f"{t}: {'not reached' if m is None else f'{m:.1f}'}" for t, m in reached.items()) + ".", "",
             *comparison_table(ends["before"], ends["after"])]
    paths = {"summary": out / "summary.md",
             "before_after": before_after_grid(out / "before", out / "after", out / "before_after.png"),
             "curve": plot_curves({algorithm: curve}, list(LONG_DEMO_TARGETS), out / "curve.png"),
             "train": trainer.run_dir}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    paths["summary"].write_text("\n".join(lines) + "\n")
    return DemoResult(out=out, summary=summary, paths=paths)


def _resumable_long_run(out: Path, settings: dict[str, Any]) -> list[dict]:
    """The curve of the unfinished ``demo --long`` run in ``out``, checked against ``settings``; one-line
    errors for a folder that holds none, or one made with other settings."""
    from diffalign.errors import MissingPathError, UserError, read_json, read_jsonl
    from diffalign.training.checkpoint import find_latest_checkpoint

    saved = out / "settings.json"
    if not saved.exists() or not (out / "curve.jsonl").exists():
        raise MissingPathError(f"--resume: {out} holds no unfinished demo --long run (settings.json and curve.jsonl)")
    made_with = read_json(saved, "demo --long settings")
    changed = sorted(k for k in settings if made_with.get(k) != settings[k])
    if changed:
        raise UserError(f"--resume: {out} was made with other settings ({', '.join(changed)}: "
                        + ", ".join(f"{k}={made_with.get(k)!r}" for k in changed) + "); give them again or drop --resume")
    if find_latest_checkpoint(out / "train") is None:
        raise MissingPathError(f"--resume: {out} has no checkpoint yet (the run stopped before its first evaluation "
                               f"ended); start it again in another --out")
    return read_jsonl(out / "curve.jsonl", "demo --long curve")  # a line cut short by the kill: one-line error


def build_shapes_preference_data(adapter, folder: Path, algorithm: str, prompts: int, seed: int, progress: bool, log,
                                 scorer: str = "shapes", scorer_options: dict[str, Any] | None = None) -> tuple[Path, str]:
    """ShapesWorld's own Pick-a-Pic: the model's samples of ShapesWorld captions scored by ``scorer`` (the judge
    by default), as ``diffalign prefs build --pairs every`` writes them. Returns the algorithm's manifest and a
    description."""
    from diffalign import scorers
    from diffalign.preferences.build import build_preferences
    from diffalign.training.prompts import derive_seed, prompt_source

    options = {"mode": "fraction"} if scorer == "shapes" and scorer_options is None else dict(scorer_options or {})
    judge = describe_reward(scorer, options)
    log(f"      building preference data: {prompts} prompts x {PREFERENCE_IMAGES} samples, scored by {judge}")
    captions = prompt_source("shapes").draw(prompts, derive_seed(seed, "demo-preference-data"))
    summary = build_preferences(adapter, captions, scorers.load(scorer, **options), folder,
                                images_per_prompt=PREFERENCE_IMAGES, steps=PREFERENCE_STEPS, guidance_scale=1.0,
                                seed=seed, progress=progress, pairing="every")
    kind = PREFERENCE_DATA[algorithm]
    what = {"pairs.jsonl": f"{summary['pairs']} pairs (every two samples of a caption with different scores)",
            "labels.jsonl": f"{summary['labels']} labelled images ({summary['desirable']} desirable)"}[kind]
    return folder / kind, f"{what} of {prompts} prompts x {PREFERENCE_IMAGES} samples, scored by {judge}"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algorithm", choices=sorted({**DEMO_SETTINGS, **VIDEO_DEMO_SETTINGS}), default=DEFAULT_ALGORITHM,
                        help=f"algorithm (default {DEFAULT_ALGORITHM}); each uses its *_shapes recipe, the preference ones "
                             f"({', '.join(PREFERENCE_DATA)}) on preference data built from the model with the judge first")
    parser.add_argument("--model", default=None, help="ShapesWorld model: shipped name or folder (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: what fits a few CPU minutes)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/demo-TIME)")
    parser.add_argument("--prompts-per-task", type=int, default=None,
                        help="ShapesEval prompts per task, before and after (default 4; --long runs the full suite)")
    parser.add_argument("--images-per-prompt", type=int, default=None, help="default 2 (--long: the suite's 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value (repeatable), e.g. --set train.learning_rate=1e-4")
    parser.add_argument("--video", action="store_true",
                        help="text-to-video: IPO rounds on shapes-video (critic: the video judge), evaluated on VideoShapesEval")
    parser.add_argument("--long", action="store_true",
                        help="the ShapesEval jump: train for --minutes CPU-minutes (one thread) with the full ShapesEval "
                             "every --every minutes; writes the per-task table, the curve and the captioned grid")
    parser.add_argument("--minutes", type=float, default=30.0, help="--long: CPU-minutes of training (default 30)")
    parser.add_argument("--every", type=float, default=5.0, help="--long: CPU-minutes between evaluations (default 5)")
    parser.add_argument("--resume", action="store_true",
                        help="--long: continue the interrupted run in --out from its last evaluation (the same options)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (sampling, evaluation)")


def run(args: argparse.Namespace) -> int:
    from diffalign.errors import UserError

    out = args.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.time()
    if args.resume and not (args.long and args.out):
        raise UserError("--resume continues an interrupted demo --long run: give --long and its --out")
    if args.long:
        if args.video or args.epochs is not None:
            raise UserError("--long trains for --minutes of CPU time on images: drop --video and --epochs")
        if args.prompts_per_task is not None or args.images_per_prompt is not None:
            raise UserError("--long always evaluates the full ShapesEval suite (90 prompts x 4 images): "
                            "drop --prompts-per-task and --images-per-prompt")
        import torch

        torch.set_num_threads(1)  # the budget is minutes of one CPU thread
        result = run_long_demo(out, algorithm=args.algorithm, model=args.model or "shapes-sd", minutes=args.minutes,
                               every=args.every, seed=args.seed, overrides=args.overrides, resume=args.resume,
                               progress=not args.no_progress)
    else:
        result = run_demo(out, algorithm=args.algorithm, model=args.model, epochs=args.epochs,
                          prompts_per_task=4 if args.prompts_per_task is None else args.prompts_per_task,
                          images_per_prompt=2 if args.images_per_prompt is None else args.images_per_prompt,
                          seed=args.seed, overrides=args.overrides, progress=not args.no_progress, video=args.video)
    print()
    print(result.paths["summary"].read_text())
    print(f"done in {time.time() - started:.0f} s; results in {result.out}:")
    for name, path in result.paths.items():
        print(f"  {name:13s} {path}")
    return 0
