"""GenEval's protocol: the 553 prompts, image generation, resumable scoring, the official summary.

* **Prompts**: the shipped ``assets/prompts/geneval/evaluation_metadata.jsonl`` (MIT, see its README).
* **Images** (GenEval's layout, readable by GenEval's own evaluator)::

      DIR/<prompt index:05d>/metadata.jsonl      # the prompt's metadata row
      DIR/<prompt index:05d>/samples/<n:04d>.png # 4 per prompt by default

  :func:`generate_images` writes it with per-image seeds; existing images are kept (resume).
* **Scoring** (:func:`score_images`): every ``\\d+.png`` of every prompt folder goes through the
  detector, the colour classifier and :func:`~diffalign.eval.geneval.rules.evaluate`. One JSONL row
  per image in ``results.jsonl`` (GenEval's fields: ``filename``, ``tag``, ``prompt``, ``correct``,
  ``reason``, ``metadata`` and ``details`` as JSON strings, plus ``prompt_index``, ``sample_index``),
  appended as images are scored; a resumed run scores only images without a row.
* **Summary** (:func:`summarize_results`, GenEval's ``summary_scores.py``): per task the share of
  correct images; **overall = the unweighted mean of the task accuracies**; also the share of
  correct images and of prompts (grouped by metadata) with at least one correct image.
  ``summary.json`` and ``summary.md``.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image, ImageOps

from diffalign.assets_path import asset_path
from diffalign.errors import read_text
from diffalign.eval.benchmark import (
    Benchmark, BenchmarkError, PromptItem, SamplingProtocol, load_prompt_suite, media_of, read_results, summarize,
)
from diffalign.eval.detection import Detector
from diffalign.media import MediaError, pil_to_tensor, save_image

from .rules import DEFAULT_OPTIONS, TASKS, GenEvalOptions, MetadataError, check_metadata, evaluate

logger = logging.getLogger(__name__)

NAME = "GenEval"
VERSION = "af4902f"
_FOLDER = re.compile(r"^\d+$")
_IMAGE = re.compile(r"^\d+\.png$")


def prompts_path() -> Path:
    return asset_path("prompts", "geneval", "evaluation_metadata.jsonl")


def load_prompts(path: str | Path | None = None) -> list[PromptItem]:
    """GenEval metadata rows (default: the shipped 553), each checked by the rule engine."""
    items = load_prompt_suite(path or prompts_path())
    for item in items:
        try:
            check_metadata(item.metadata)
        except MetadataError as err:
            raise BenchmarkError(f"{path or prompts_path()}: prompt {item.index + 1}: {err}") from err
    return items


def sample_path(images_dir: Path, prompt_index: int, sample_index: int) -> Path:
    return images_dir / f"{prompt_index:05d}" / "samples" / f"{sample_index:04d}.png"


def generate_images(
    sampler: Any,
    images_dir: str | Path,
    items: Sequence[PromptItem],
    protocol: SamplingProtocol,
    progress: bool = True,
) -> int:
    """Sample ``protocol.images_per_prompt`` images per prompt into GenEval's layout; images already
    there are kept. Returns the number of images written."""
    images_dir = Path(images_dir)
    jobs = [
        (item, n) for item in items for n in range(protocol.images_per_prompt)
        if not sample_path(images_dir, item.index, n).exists()
    ]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=f"{NAME} sampling", unit="img", disable=not progress)
    for start in range(0, len(jobs), protocol.batch_size):
        batch = jobs[start : start + protocol.batch_size]
        generators = [torch.Generator().manual_seed(protocol.image_seed(item.index, n)) for item, n in batch]
        media = media_of(sampler.sample(
            [item.prompt for item, _ in batch], steps=protocol.steps, guidance_scale=protocol.guidance_scale,
            generator=generators, **protocol.sample_kwargs,
        ))
        if media.shape[0] != len(batch):
            raise BenchmarkError(f"the sampler returned {media.shape[0]} images for {len(batch)} prompts")
        for (item, n), image in zip(batch, media):
            path = sample_path(images_dir, item.index, n)
            metadata_file = path.parent.parent / "metadata.jsonl"
            if not metadata_file.exists():
                metadata_file.parent.mkdir(parents=True, exist_ok=True)
                metadata_file.write_text(json.dumps(item.metadata) + "\n")
            partial = path.with_name(f"{path.stem}.partial.png")  # not \d+.png: never scored half-written
            save_image(image, partial)
            partial.replace(path)
        bar.update(len(batch))
    bar.close()
    return len(jobs)


@dataclass(frozen=True)
class PromptFolder:
    index: int
    metadata: dict[str, Any]
    images: tuple[Path, ...]


def read_image_folder(images_dir: str | Path) -> list[PromptFolder]:
    """The prompt folders of a GenEval image folder, checked before any model loads."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise BenchmarkError(f"{images_dir}: no such folder of GenEval images")
    folders = []
    for folder in sorted((p for p in images_dir.iterdir() if p.is_dir() and _FOLDER.match(p.name)), key=lambda p: int(p.name)):
        metadata_file = folder / "metadata.jsonl"
        if not metadata_file.exists():
            raise BenchmarkError(f"{metadata_file}: missing (each prompt folder needs its metadata row)")
        lines = [line for line in read_text(metadata_file, "GenEval metadata", error=BenchmarkError).splitlines() if line.strip()]
        try:
            metadata = json.loads(lines[0]) if lines else None
            check_metadata(metadata)
        except (json.JSONDecodeError, MetadataError) as err:
            raise BenchmarkError(f"{metadata_file}: not a GenEval metadata row ({err})") from err
        samples = folder / "samples"
        images = tuple(sorted((p for p in samples.iterdir() if _IMAGE.match(p.name)), key=lambda p: int(p.stem))) if samples.is_dir() else ()
        folders.append(PromptFolder(int(folder.name), metadata, images))
    if not folders:
        raise BenchmarkError(f"{images_dir}: no prompt folders (expected 00000/metadata.jsonl, 00000/samples/0000.png, ...)")
    if not any(f.images for f in folders):
        raise BenchmarkError(f"{images_dir}: no images (expected <prompt>/samples/<n>.png)")
    return folders


def _metadata_key(metadata: Any) -> str:
    return metadata if isinstance(metadata, str) else json.dumps(metadata)


def summarize_results(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """GenEval's ``summary_scores.py`` on result rows (``tag``, ``correct``, ``metadata``): per task
    accuracy, overall = mean of the task accuracies, correct images, prompts with a correct image."""
    if not rows:
        raise BenchmarkError("no results to summarise")
    tasks = list(dict.fromkeys(r["tag"] for r in rows))  # pandas groupby(sort=False): order of appearance
    adapted = [
        {"tag": r["tag"], "correct": bool(r["correct"]), "score": float(bool(r["correct"])), "prompt_index": _metadata_key(r["metadata"])}
        for r in rows
    ]
    generic = summarize(adapted, tasks)
    per_task = {
        task: {"accuracy": v["accuracy"], "correct": sum(r["correct"] for r in adapted if r["tag"] == task), "images": v["images"], "prompts": v["prompts"]}
        for task, v in generic["tasks"].items()
    }
    return {
        "overall": generic["overall"],
        "tasks": per_task,
        "images": len(rows),
        "prompts": len({r["prompt_index"] for r in adapted}),
        "correct_images": generic["correct_images"],
        "correct_prompts": generic["prompts_with_a_correct_image"],
    }


def summary_markdown(summary: Mapping[str, Any], title: str) -> str:
    lines = [f"# {title}", "", "| task | accuracy | correct / images | prompts |", "|---|---|---|---|"]
    ordered = [t for t in TASKS if t in summary["tasks"]] + [t for t in summary["tasks"] if t not in TASKS]
    for task in ordered:
        v = summary["tasks"][task]
        lines.append(f"| {task} | {v['accuracy']:.4f} | {v['correct']} / {v['images']} | {v['prompts']} |")
    lines.append(f"| **overall** | **{summary['overall']:.5f}** | | {summary['prompts']} |")
    lines += [
        "",
        "Overall = unweighted mean of the task accuracies (GenEval's headline number).",
        f"Correct images: {summary['correct_images']:.2%}; prompts with at least one correct image: {summary['correct_prompts']:.2%}.",
    ]
    if summary.get("detector"):
        lines.append(f"Detector: {summary['detector']}; colour classifier: {summary.get('color_classifier')}.")
    if summary.get("skipped"):
        lines.append(f"Skipped (unreadable): {len(summary['skipped'])} images, listed in summary.json.")
    return "\n".join(lines) + "\n"


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")  # GenEval transposes by EXIF too
    except Exception as err:  # PIL raises many types for corrupt data
        raise MediaError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def score_images(
    images_dir: str | Path,
    out_dir: str | Path,
    detector: Detector | Callable[[], Detector] | None = None,
    color_classifier: Any = None,
    options: GenEvalOptions = DEFAULT_OPTIONS,
    *,
    resume: bool = False,
    batch_size: int = 4,
    progress: bool = True,
    title: str | None = None,
    extra_summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a GenEval image folder into ``out_dir`` (``results.jsonl``, ``summary.json``, ``summary.md``).

    ``detector`` / ``color_classifier``: an instance, or a class / ``functools.partial`` that builds
    one when the first image needs it (None: the defaults, :class:`~.detector.Mask2FormerDetector` and
    :class:`~.colors.CLIPColorClassifier`), so a finished run re-summarises without loading a model.
    """
    folders = read_image_folder(images_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if results_path.exists():
        if not resume:
            raise BenchmarkError(f"{results_path} exists: pass --resume to continue that run, or choose another --out")
        done = {r["filename"]: r for r in read_results(results_path) if "filename" in r}
    images_dir = Path(images_dir)
    jobs = [(f, p) for f in folders for p in f.images if p.relative_to(images_dir).as_posix() not in done]
    models: dict[str, Any] = {}

    def model(kind: str) -> Any:
        if kind not in models:
            given = detector if kind == "detector" else color_classifier
            if given is None:
                from .colors import CLIPColorClassifier
                from .detector import Mask2FormerDetector

                given = Mask2FormerDetector if kind == "detector" else CLIPColorClassifier
            models[kind] = given() if isinstance(given, (type, functools.partial)) else given
        return models[kind]

    skipped: list[str] = []
    started = time.time()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=f"{NAME} scoring", unit="img", disable=not progress)
    with results_path.open("a") as results_file:
        for start in range(0, len(jobs), batch_size):
            loaded = []
            for folder, path in jobs[start : start + batch_size]:
                try:
                    loaded.append((folder, path, _open_image(path)))
                except MediaError as err:
                    logger.warning("skipping %s", err)
                    skipped.append(str(err))
            for size in dict.fromkeys(im.size for _, _, im in loaded):  # one detector call per image size
                group = [entry for entry in loaded if entry[2].size == size]
                detections = model("detector")(pil_to_tensor([im for _, _, im in group]))
                for (folder, path, image), found in zip(group, detections):
                    needs_colour = any("color" in c for c in folder.metadata["include"])
                    classify = model("colors").for_image(image) if needs_colour else None
                    result = evaluate(folder.metadata, found, classify, options)
                    filename = path.relative_to(images_dir).as_posix()
                    row = {
                        "filename": filename,
                        "tag": folder.metadata.get("tag", "all"),
                        "prompt": folder.metadata.get("prompt", ""),
                        "correct": result.correct,
                        "reason": result.reason,
                        "metadata": json.dumps(folder.metadata),
                        "details": json.dumps({k: [[*map(float, d.box), float(d.score)] for d in v] for k, v in result.objects.items()}),
                        "prompt_index": folder.index,
                        "sample_index": int(path.stem),
                    }
                    results_file.write(json.dumps(row) + "\n")
                    done[filename] = row
            results_file.flush()
            bar.update(len(jobs[start : start + batch_size]))
    bar.close()

    wanted = [p.relative_to(images_dir).as_posix() for f in folders for p in f.images]
    rows = [done[f] for f in wanted if f in done]
    summary = summarize_results(rows)
    summary.update(
        benchmark=NAME,
        version=VERSION,
        options=asdict(options),
        detector=_describe(models.get("detector"), detector, "Mask2Former (transformers)"),
        color_classifier=_describe(models.get("colors"), color_classifier, "open_clip ViT-L-14 openai"),
        skipped=skipped,
        seconds=round(time.time() - started, 2),
        **dict(extra_summary or {}),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary, title or NAME))
    return summary


def _describe(built: Any, given: Any, default: str) -> str:
    if built is not None:
        return str(getattr(built, "description", type(built).__name__))
    return default if given is None else str(getattr(given, "description", given))


def run_geneval(
    sampler: Any,
    out_dir: str | Path,
    *,
    protocol: SamplingProtocol | None = None,
    prompts: str | Path | None = None,
    max_prompts_per_task: int | None = None,
    detector: Any = None,
    color_classifier: Any = None,
    options: GenEvalOptions = DEFAULT_OPTIONS,
    model_name: str | None = None,
    resume: bool = False,
    progress: bool = True,
    scoring_batch_size: int = 4,
) -> dict[str, Any]:
    """Generate GenEval's images for ``sampler`` into ``out_dir/images`` and score them."""
    protocol = protocol or SamplingProtocol(images_per_prompt=4, steps=50, guidance_scale=9.0)
    out = Path(out_dir)
    images_dir = out / "images"
    if images_dir.exists() and not resume:
        raise BenchmarkError(f"{images_dir} exists: pass --resume to continue that run, or choose another --out")
    items = Benchmark(NAME, VERSION, load_prompts(prompts), judge=None, protocol=protocol).subset(max_prompts_per_task)
    generate_images(sampler, images_dir, items, protocol, progress)
    wanted = {item.index for item in items}
    stale = [f.index for f in read_image_folder(images_dir) if f.index not in wanted]
    if stale:
        raise BenchmarkError(f"{images_dir} holds prompt folders of another run ({stale[:5]}...); choose another --out")
    title = f"{NAME} — {model_name}" if model_name else NAME
    extra = {"model": model_name, "protocol": asdict(protocol), "max_prompts_per_task": max_prompts_per_task}
    return score_images(
        images_dir, out, detector, color_classifier, options, resume=resume, batch_size=scoring_batch_size,
        progress=progress, title=title, extra_summary=extra,
    )


__all__ = [
    "NAME", "VERSION", "PromptFolder", "generate_images", "load_prompts", "prompts_path", "read_image_folder",
    "run_geneval", "sample_path", "score_images", "summarize_results", "summary_markdown",
]
