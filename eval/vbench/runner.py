"""Score a folder of VBench videos (and optionally generate it first), resumably.

Output folder:

* ``results.jsonl``: one row per video and dimension (``video``, ``prompt``, ``index``,
  ``dimension``, ``score`` = the video's score, ``total``/``count`` = its share of the dimension's
  average, ``details``), appended video by video; ``resume=True`` skips rows already there;
* ``summary.json`` / ``summary.md``: each dimension's score (``Σ total / Σ count``), status
  (``ok``, ``unavailable`` with the reason, ``no videos``), videos scored and missing, and VBench's
  quality / semantic / total from :func:`~diffalign.eval.vbench.aggregate.aggregate`.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from diffalign.eval.benchmark import read_results
from diffalign.media import MediaError, check_media, load_video, save_video, to_uint8, video_fps

from .aggregate import DIMENSION_BOUNDS, aggregate
from .dimensions import Dimension, DimensionUnavailable, ModelOptions, Video, build_dimensions
from .suite import VIDEOS_PER_PROMPT, VBenchError, VBenchPrompt, first_prompts, load_suite, prompts_for

logger = logging.getLogger(__name__)
ALL_DIMENSIONS = tuple(DIMENSION_BOUNDS)


def read_video(path: Path) -> Video:
    """Frames as uint8 ``T×3×H×W`` (through :func:`diffalign.media.load_video`) and the fps."""
    return Video(to_uint8(load_video(path)), video_fps(path))


def check_dimensions(dimensions: Sequence[str] | None) -> list[str]:
    names = list(dimensions) if dimensions else list(ALL_DIMENSIONS)
    unknown = [d for d in names if d not in DIMENSION_BOUNDS]
    if unknown:
        raise VBenchError(f"unknown VBench dimension(s) {', '.join(unknown)}; known: {', '.join(ALL_DIMENSIONS)}")
    return list(dict.fromkeys(names))


def evaluate_videos(
    videos_dir: str | Path,
    out_dir: str | Path,
    dimensions: Sequence[str] | None = None,
    options: ModelOptions | None = None,
    suite: list[VBenchPrompt] | None = None,
    videos_per_prompt: int = VIDEOS_PER_PROMPT,
    resume: bool = False,
    progress: bool = True,
    built: Mapping[str, Dimension | DimensionUnavailable] | None = None,
) -> dict[str, Any]:
    """Score ``videos_dir`` (files ``{prompt}-{index}.mp4``) on ``dimensions`` (default: all 16)."""
    videos_dir, out = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise VBenchError(f"{videos_dir}: no such video folder")
    names = check_dimensions(dimensions)
    suite = suite if suite is not None else load_suite()
    results_path = out / "results.jsonl"
    if results_path.exists() and not resume:
        raise VBenchError(f"{results_path} exists: pass --resume to continue that run, or choose another folder")
    built = dict(built) if built is not None else build_dimensions(names, options)
    runnable = {n: d for n, d in built.items() if n in names and not isinstance(d, DimensionUnavailable)}
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["video"], r["dimension"]): r for r in read_results(results_path)} if results_path.exists() else {}
    missing: dict[str, int] = {n: 0 for n in names}
    unreadable: list[str] = []
    jobs = [(item, index) for item in prompts_for(suite, names) for index in range(videos_per_prompt)]
    started = time.time()
    from tqdm.auto import tqdm

    with results_path.open("a") as results, tqdm(total=len(jobs), desc="vbench", unit="video", disable=not progress) as bar:
        for item, index in jobs:
            bar.update(1)
            wanted = [n for n in names if n in item.dimensions]
            name = item.video_name(index)
            path = videos_dir / name
            if not path.is_file():
                for n in wanted:
                    missing[n] += 1
                continue
            todo = [n for n in wanted if n in runnable and (name, n) not in done]
            if not todo:
                continue
            try:
                video = read_video(path)
            except MediaError as err:
                logger.warning("skipping %s", err)
                unreadable.append(name)
                continue
            for n in todo:
                result = runnable[n](video, item)
                row = {"video": name, "prompt": item.prompt, "index": index, "dimension": n, "score": result.score,
                       "total": result.total, "count": result.count, "details": result.details}
                results.write(json.dumps(row) + "\n")
                done[(name, n)] = row
            results.flush()
    summary = summarize(list(done.values()), names, built, missing)
    summary.update(videos=str(videos_dir), unreadable=unreadable, seconds=round(time.time() - started, 2))
    summary["partial"] = summary["partial"] or bool(unreadable)
    write_summary(summary, out)
    return summary


def summarize(
    rows: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    built: Mapping[str, Dimension | DimensionUnavailable],
    missing: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Per-dimension scores ``Σ total / Σ count`` and VBench's aggregate over the dimensions scored."""
    per_dimension: dict[str, dict[str, Any]] = {}
    for name in names:
        own = [r for r in rows if r["dimension"] == name]
        count = sum(r["count"] for r in own)
        entry: dict[str, Any] = {"videos": len(own), "missing_videos": (missing or {}).get(name, 0)}
        if isinstance(built.get(name), DimensionUnavailable):
            entry.update(status="unavailable", reason=str(built[name]), score=None)
        elif count:
            entry.update(status="ok", score=sum(r["total"] for r in own) / count)
        else:
            entry.update(status="no videos", score=None)
        per_dimension[name] = entry
    scores = {n: e["score"] for n, e in per_dimension.items() if e["score"] is not None}
    headline = aggregate(scores)
    headline["partial"] = headline["partial"] or any(e["missing_videos"] for e in per_dimension.values())
    return {"benchmark": "vbench", "dimensions": per_dimension, **headline}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def summary_markdown(summary: Mapping[str, Any]) -> str:
    lines = ["# VBench", "", "| dimension | score | videos | missing | status |", "|---|---|---|---|---|"]
    for name, entry in summary["dimensions"].items():
        status = entry["status"] + (f": {entry['reason']}" if entry.get("reason") else "")
        lines.append(f"| {name} | {_pct(entry['score'])} | {entry['videos']} | {entry['missing_videos']} | {status} |")
    lines += [
        "",
        f"Quality {_pct(summary['quality'])}, semantic {_pct(summary['semantic'])}, total {_pct(summary['total'])}"
        + (" (partial: averaged over the dimensions scored; missing: " + ", ".join(summary["missing"]) + ")" if summary["partial"] else "") + ".",
        "",
        "Total = (4·quality + semantic) / 5 with VBench's normalisation bounds and weights.",
        "",
    ]
    if summary.get("missing") is not None and any(e["missing_videos"] for e in summary["dimensions"].values()):
        lines.insert(-1, "Some videos were missing: scores cover only the videos found.")
    return "\n".join(lines)


def write_summary(summary: Mapping[str, Any], out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))


def generate_videos(
    sampler: Any,
    out_dir: str | Path,
    dimensions: Sequence[str] | None = None,
    suite: list[VBenchPrompt] | None = None,
    videos_per_prompt: int = VIDEOS_PER_PROMPT,
    steps: int = 50,
    guidance_scale: float = 6.0,
    seed: int = 42,
    batch_size: int = 1,
    fps: int = 8,
    sample_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    max_prompts: int | None = None,
) -> Path:
    """Sample ``videos_per_prompt`` videos per prompt into ``out_dir/{prompt}-{index}.mp4``; files
    already there are kept (a killed run continues). Each video's seed is
    ``seed·1000003 + prompt index·1009 + index``, the prompt index counted in ``suite``, so a quick run
    on the first ``max_prompts`` prompts of each dimension makes exactly the videos of the full run for those prompts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suite = suite if suite is not None else load_suite()
    position = {item.prompt: number for number, item in enumerate(suite)}
    chosen = first_prompts(suite, check_dimensions(dimensions), max_prompts)
    jobs = [(item, index) for item in chosen for index in range(videos_per_prompt) if not (out / item.video_name(index)).is_file()]
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(jobs), batch_size), desc="vbench sampling", unit="batch", disable=not progress):
        batch = jobs[start : start + batch_size]
        seeds = [seed * 1_000_003 + position[item.prompt] * 1_009 + index for item, index in batch]
        result = sampler.sample(
            [item.prompt for item, _ in batch], steps=steps, guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(s) for s in seeds], **dict(sample_kwargs or {}),
        )
        media = getattr(result, "media", result)
        if not isinstance(media, torch.Tensor) or check_media(media) != "video":
            raise VBenchError("the model made no videos (VBench needs B×T×C×H×W video media); use a video model")
        if media.shape[0] != len(batch):
            raise VBenchError(f"the sampler returned {media.shape[0]} videos for {len(batch)} prompts")
        for (item, index), video in zip(batch, media.detach().float().cpu().clamp(0, 1)):
            final = out / item.video_name(index)
            partial = out / f".partial-{index}-{final.name}"
            save_video(video, partial, fps=fps)
            partial.replace(final)  # a killed write never leaves a file that resume would keep
    return out
