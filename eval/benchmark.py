"""Generic benchmark pieces: prompt suite + sampling protocol + judge -> JSONL rows + summary table.

A :class:`Benchmark` names a prompt suite (:class:`PromptItem` rows in GenEval's metadata format:
``tag``, ``prompt`` and whatever the judge needs), a :class:`SamplingProtocol` (images per prompt,
steps, guidance, seeds) and a judge ``(media B×…, items) -> list[Judgement]``. :func:`run_benchmark`
samples every prompt through any object with the adapter's ``sample(prompts, steps=...,
guidance_scale=..., generator=...)`` signature (its result's ``.media`` is ``B×3×H×W`` in [0, 1], or
the result is that tensor), judges the samples and writes into one folder:

* ``images/<prompt index:05d>/metadata.jsonl`` and ``images/<index>/samples/<n>.png`` (GenEval's
  layout, so GenEval's own evaluator can read the same images);
* ``results.jsonl``: one row per image (``filename``, ``tag``, ``prompt``, ``correct``, ``score``,
  ``reason``, ``metadata``, ``details``, plus ``prompt_index``, ``sample_index``, ``seed``), appended
  batch by batch, so an interrupted run keeps what it has (``resume=True`` continues it);
* ``summary.json`` and ``summary.md``: per-task accuracy and mean score, and **overall = the
  unweighted mean of the task accuracies** (as GenEval reports), plus GenEval's secondary numbers
  (share of correct images, share of prompts with at least one correct image);
* ``grid.png``: a few prompts per task, one row per prompt.

Seeds are per image (``seed``, prompt index, sample index), so a subset run reproduces exactly the
images of the full run for the prompts it keeps. GenEval- and VBench-style harnesses slot in by
providing their own suite and judge.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import torch

from diffalign.errors import MAX_STEPS, UserError, number, read_text
from diffalign.media import MediaError, check_media, load_image, load_video, save_frame_strip, save_grid, save_image, save_video

logger = logging.getLogger(__name__)


class BenchmarkError(UserError):
    """Bad benchmark input (prompt file, sampler output, options); the message names the problem."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a suite: ``metadata`` holds at least ``tag`` and ``prompt`` (GenEval format)."""

    index: int
    metadata: dict[str, Any]

    @property
    def prompt(self) -> str:
        return self.metadata["prompt"]

    @property
    def tag(self) -> str:
        return self.metadata.get("tag", "all")


@dataclass
class Judgement:
    """A judge's answer for one image."""

    correct: bool
    score: float
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Judge(Protocol):
    def __call__(self, media: torch.Tensor, items: Sequence[PromptItem]) -> Sequence[Judgement | Any]: ...


@dataclass
class SamplingProtocol:
    """How samples are drawn: ``images_per_prompt`` per prompt, the sampler settings, per-image seeds."""

    images_per_prompt: int = 4
    steps: int = 20
    guidance_scale: float = 4.5
    seed: int = 42
    batch_size: int = 16
    sample_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the messages of diffalign eval's --images-per-prompt, --steps, ... checks, without the dashes
        try:
            number(self.images_per_prompt, "images_per_prompt", low=1, integer=True)
            number(self.steps, "steps", low=1, high=MAX_STEPS, integer=True)
            number(self.guidance_scale, "guidance_scale", low=0)
            number(self.batch_size, "batch_size", low=1, integer=True)
            number(self.seed, "seed", integer=True)
        except UserError as err:
            raise BenchmarkError(str(err)) from None

    def image_seed(self, prompt_index: int, sample_index: int) -> int:
        return self.seed * 1_000_003 + prompt_index * 1_009 + sample_index


@dataclass
class Benchmark:
    """A named, versioned prompt suite with its sampling protocol and judge."""

    name: str
    version: str
    prompts: list[PromptItem]
    judge: Judge
    protocol: SamplingProtocol = field(default_factory=SamplingProtocol)
    tasks: tuple[str, ...] | None = None  # order of the summary table (default: order of appearance)
    modality: str = "image"  # what the sampler must return: "image" (B×3×H×W) or "video" (B×T×3×H×W)

    def task_names(self) -> list[str]:
        seen = list(dict.fromkeys(p.tag for p in self.prompts))
        if self.tasks is None:
            return seen
        return [t for t in self.tasks if t in seen] + [t for t in seen if t not in self.tasks]

    def subset(self, max_prompts_per_task: int | None) -> list[PromptItem]:
        """The first ``max_prompts_per_task`` prompts of each task (all when None)."""
        if max_prompts_per_task is None:
            return list(self.prompts)
        try:
            number(max_prompts_per_task, "max_prompts_per_task", low=1, integer=True)
        except UserError as err:
            raise BenchmarkError(str(err)) from None
        taken: dict[str, int] = {}
        out = []
        for item in self.prompts:
            if taken.get(item.tag, 0) < max_prompts_per_task:
                taken[item.tag] = taken.get(item.tag, 0) + 1
                out.append(item)
        return out


def load_prompt_suite(path: str | Path) -> list[PromptItem]:
    """Read a GenEval-style metadata JSONL file (one JSON object with ``prompt`` per line)."""
    path = Path(path)
    if not path.exists():
        raise BenchmarkError(f"{path}: prompt suite not found")
    items = []
    for line_number, line in enumerate(read_text(path, "prompt suite", error=BenchmarkError).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkError(f"{path}:{line_number}: not valid JSON ({err})") from err
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise BenchmarkError(f"{path}:{line_number}: each line needs a JSON object with a 'prompt' string")
        items.append(PromptItem(index=len(items), metadata=row))
    if not items:
        raise BenchmarkError(f"{path}: no prompts")
    return items


def suite_items(prompts: str | Path | Sequence[Mapping[str, Any]] | None, default: Path) -> list[PromptItem]:
    """A suite's items: from a metadata JSONL path (``None``: the shipped ``default``) or a list of metadata dicts."""
    if prompts is None or isinstance(prompts, (str, Path)):
        return load_prompt_suite(prompts or default)
    return [PromptItem(i, dict(m)) for i, m in enumerate(prompts)]


def distinct_prompt_suite(
    sample_metadata: Callable[[random.Random, str], dict[str, Any]], tasks: Sequence[str], per_task: int, seed: int
) -> list[dict[str, Any]]:
    """``per_task`` distinct prompts per task, drawn with ``sample_metadata(rng, task)`` from one seeded stream
    (a duplicate is redrawn, up to 2000 misses: small prompt spaces run out of new prompts), in task order."""
    rng = random.Random(seed)
    suite: list[dict[str, Any]] = []
    for task in tasks:
        seen: dict[str, dict[str, Any]] = {}
        misses = 0
        while len(seen) < per_task and misses < 2_000:
            metadata = sample_metadata(rng, task)
            if metadata["prompt"] in seen:
                misses += 1
            else:
                seen[metadata["prompt"]] = metadata
        suite.extend(seen.values())
    return suite


def write_prompt_suite(metadata: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(dict(m)) + "\n" for m in metadata))
    return path


def media_of(result: Any, modality: str = "image") -> torch.Tensor:
    """A sampler's result (a rollout or a tensor) as images (or videos) on CPU in [0, 1]; BenchmarkError otherwise."""
    media = getattr(result, "media", result)
    if not isinstance(media, torch.Tensor):
        raise BenchmarkError(f"the sampler returned {type(result).__name__} without a .media tensor of {modality}s")
    check_media(media, modality)
    return media.detach().float().cpu().clamp(0, 1)


def _as_judgement(value: Any) -> Judgement:
    if isinstance(value, Judgement):
        return value
    return Judgement(bool(value.correct), float(value.score), str(getattr(value, "reason", "")), dict(getattr(value, "details", {})))


def summarize(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """Per-task accuracy / mean score, overall = unweighted mean of task accuracies, GenEval extras."""
    per_task: dict[str, dict[str, float]] = {}
    for task in tasks:
        task_rows = [r for r in rows if r["tag"] == task]
        if task_rows:
            per_task[task] = {
                "accuracy": sum(r["correct"] for r in task_rows) / len(task_rows),
                "score": sum(r["score"] for r in task_rows) / len(task_rows),
                "images": len(task_rows),
                "prompts": len({r["prompt_index"] for r in task_rows}),
            }
    by_prompt: dict[int, bool] = {}
    for r in rows:
        by_prompt[r["prompt_index"]] = by_prompt.get(r["prompt_index"], False) or bool(r["correct"])
    accuracies = [v["accuracy"] for v in per_task.values()]
    return {
        "overall": sum(accuracies) / len(accuracies) if accuracies else 0.0,
        "overall_score": sum(v["score"] for v in per_task.values()) / len(per_task) if per_task else 0.0,
        "tasks": per_task,
        "images": len(rows),
        "correct_images": sum(r["correct"] for r in rows) / len(rows) if rows else 0.0,
        "prompts_with_a_correct_image": sum(by_prompt.values()) / len(by_prompt) if by_prompt else 0.0,
    }


def summary_markdown(summary: Mapping[str, Any], title: str) -> str:
    tasks = summary["tasks"]
    lines = [
        f"# {title}",
        "",
        "| task | accuracy | mean score | prompts | images |",
        "|---|---|---|---|---|",
    ]
    for task, values in tasks.items():
        lines.append(f"| {task} | {values['accuracy']:.3f} | {values['score']:.3f} | {values['prompts']} | {values['images']} |")
    lines.append(f"| **overall** | **{summary['overall']:.3f}** | {summary['overall_score']:.3f} | | {summary['images']} |")
    lines += [
        "",
        "Overall = unweighted mean of the task accuracies (GenEval's headline number).",
        f"Correct images: {summary['correct_images']:.3f}; prompts with at least one correct image: "
        f"{summary['prompts_with_a_correct_image']:.3f}.",
        "",
    ]
    return "\n".join(lines)


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a results JSONL written row by row (every benchmark's resume reads it). A line cut short by a
    killed write is skipped (and logged) and closed with a newline, so rows appended on resume start a line."""
    rows = []
    text = path.read_bytes()
    for line in text.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s: skipping a truncated line (an interrupted write)", path)
    if text and not text.endswith(b"\n"):
        with path.open("ab") as handle:
            handle.write(b"\n")
    return rows


def run_benchmark(
    benchmark: Benchmark,
    sampler: Any,
    out_dir: str | Path,
    *,
    max_prompts_per_task: int | None = None,
    model_name: str | None = None,
    progress: bool = True,
    resume: bool = False,
    grid_prompts_per_task: int = 4,
    save_images: bool = True,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Sample, judge and report ``benchmark`` for ``sampler`` into ``out_dir``; returns the summary dict."""
    out = Path(out_dir)
    protocol = benchmark.protocol
    items = benchmark.subset(max_prompts_per_task)  # a bad subset fails before the folder is made
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"output folder {out} is a file; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if results_path.exists():
        if not resume:
            raise BenchmarkError(f"{results_path} exists: pass resume=True (--resume) to continue that run, or choose another folder")
        done = {r["filename"]: r for r in read_results(results_path)}
    jobs = [
        (item, n)
        for item in items
        for n in range(protocol.images_per_prompt)
        if _filename(item.index, n, benchmark.modality) not in done
    ]
    started = time.time()
    grid_images: dict[int, dict[int, torch.Tensor]] = {}
    grid_keep = {item.index for item in benchmark.subset(grid_prompts_per_task) if item in items}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=f"{benchmark.name}", unit="img", disable=not progress)
    with results_path.open("a") as results_file:
        for start in range(0, len(jobs), protocol.batch_size):
            batch = jobs[start : start + protocol.batch_size]
            seeds = [protocol.image_seed(item.index, n) for item, n in batch]
            generators = [torch.Generator(device=device or "cpu").manual_seed(s) for s in seeds]
            result = sampler.sample(
                [item.prompt for item, _ in batch],
                steps=protocol.steps,
                guidance_scale=protocol.guidance_scale,
                generator=generators,
                **protocol.sample_kwargs,
            )
            media = media_of(result, benchmark.modality)
            if media.shape[0] != len(batch):
                raise BenchmarkError(f"the sampler returned {media.shape[0]} {benchmark.modality}s for {len(batch)} prompts")
            judgements = [_as_judgement(j) for j in benchmark.judge(media, [item for item, _ in batch])]
            for (item, n), seed, image, judgement in zip(batch, seeds, media, judgements):
                filename = _filename(item.index, n, benchmark.modality)
                if save_images:
                    folder = out / "images" / f"{item.index:05d}"
                    if not (folder / "metadata.jsonl").exists():
                        folder.mkdir(parents=True, exist_ok=True)
                        (folder / "metadata.jsonl").write_text(json.dumps(item.metadata) + "\n")
                    (save_video if benchmark.modality == "video" else save_image)(image, out / filename)
                if item.index in grid_keep:
                    grid_images.setdefault(item.index, {})[n] = image
                row = {
                    "filename": filename,
                    "tag": item.tag,
                    "prompt": item.prompt,
                    "correct": judgement.correct,
                    "score": judgement.score,
                    "reason": judgement.reason,
                    "metadata": item.metadata,
                    "details": judgement.details,
                    "prompt_index": item.index,
                    "sample_index": n,
                    "seed": seed,
                }
                results_file.write(json.dumps(row) + "\n")
                done[filename] = row
            results_file.flush()
            bar.update(len(batch))
    bar.close()

    wanted = {_filename(item.index, n, benchmark.modality) for item in items for n in range(protocol.images_per_prompt)}
    rows = sorted((r for f, r in done.items() if f in wanted), key=lambda r: (r["prompt_index"], r["sample_index"]))
    summary = summarize(rows, benchmark.task_names())
    summary.update(
        benchmark=benchmark.name,
        version=benchmark.version,
        model=model_name,
        protocol=asdict(protocol),
        max_prompts_per_task=max_prompts_per_task,
        seconds=round(time.time() - started, 2),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"{benchmark.name} {benchmark.version}" + (f" — {model_name}" if model_name else "")
    (out / "summary.md").write_text(summary_markdown(summary, title))
    for index in grid_keep:  # after a resume, tiles computed earlier come back from their files
        for n in range(protocol.images_per_prompt):
            path = out / _filename(index, n, benchmark.modality)
            if n not in grid_images.get(index, {}) and path.exists():
                try:
                    grid_images.setdefault(index, {})[n] = load_video(path) if benchmark.modality == "video" else load_image(path)
                except MediaError as err:
                    logger.warning("grid: %s", err)
    _save_grid(out, grid_images, protocol.images_per_prompt)
    return summary


def _filename(prompt_index: int, sample_index: int, modality: str = "image") -> str:
    return f"images/{prompt_index:05d}/samples/{sample_index}.{'mp4' if modality == 'video' else 'png'}"


def _save_grid(out: Path, grid_images: Mapping[int, Mapping[int, torch.Tensor]], per_row: int) -> None:
    if not grid_images:
        return
    tiles = []
    for index in sorted(grid_images):
        row = grid_images[index]
        blank = torch.ones_like(next(iter(row.values())))
        tiles.extend(row.get(n, blank) for n in range(per_row))
    images = torch.stack(tiles)
    scale = max(1, 128 // images.shape[-1])  # 32 px images are hard to see at 1:1
    if images.ndim == 5:  # videos: the grid as a video, and every frame of every tile in a PNG strip
        save_video(images, out / "grid.mp4", nrow=per_row, scale=scale)
        save_frame_strip(images, out / "frames.png", scale=max(1, 64 // images.shape[-1]))
    save_grid(images, out / "grid.png", nrow=per_row, scale=scale)


__all__ = [
    "Benchmark", "BenchmarkError", "Judge", "Judgement", "PromptItem", "SamplingProtocol", "load_prompt_suite",
    "run_benchmark", "summarize", "summary_markdown", "distinct_prompt_suite", "write_prompt_suite",
]
