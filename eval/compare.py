"""Before/after: a base model and its trained version on one benchmark, with the same seeds.

Works on the folders :func:`diffalign.eval.benchmark.run_benchmark` writes (``summary.json`` and
``results.jsonl``), so every benchmark gets the same outputs:

* ``compare.md`` / ``compare.json`` — per task, accuracy and mean judge score before, after and the
  difference (after - before), and the overall numbers;
* ``before_after.png`` — one row per task, one tile per prompt (sample 0, the same seed on both sides):
  the base model's images on the left panel, the trained model's on the right, each captioned with its
  prompt and the judge's verdict.

:func:`evaluate_before_after` runs both evaluations for any benchmark given as a function
``evaluate(sampler, out_dir, model_name) -> summary``; ``diffalign demo`` and ``diffalign eval --compare``
use these pieces.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from diffalign.errors import read_jsonl

__all__ = ["Comparison", "before_after_grid", "comparison_rows", "comparison_table", "evaluate_before_after", "write_comparison"]


@dataclass
class Comparison:
    before: dict[str, Any]
    after: dict[str, Any]
    paths: dict[str, Path]


def comparison_rows(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Per-task and overall numbers before, after and ``delta = after - before`` (tasks of ``before``, in order)."""
    tasks = {}
    for task, b in before["tasks"].items():
        a = after["tasks"].get(task)
        if a is None:
            continue
        tasks[task] = {key: {"before": b[key], "after": a[key], "delta": a[key] - b[key]} for key in ("accuracy", "score")}
    overall = {key: {"before": before[name], "after": after[name], "delta": after[name] - before[name]}
               for key, name in (("accuracy", "overall"), ("score", "overall_score"))}
    return {"tasks": tasks, "overall": overall}


def comparison_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Markdown lines: one row per task and a bold overall row (accuracy = the benchmark's headline)."""
    rows = comparison_rows(before, after)
    lines = ["| task | accuracy before | accuracy after | Δ accuracy | judge score before | judge score after | Δ score |",
             "|---|---|---|---|---|---|---|"]
    for task, v in rows["tasks"].items():
        acc, score = v["accuracy"], v["score"]
        lines.append(f"| {task} | {acc['before']:.3f} | {acc['after']:.3f} | {acc['delta']:+.3f} "
                     f"| {score['before']:.3f} | {score['after']:.3f} | {score['delta']:+.3f} |")
    acc, score = rows["overall"]["accuracy"], rows["overall"]["score"]
    lines.append(f"| **overall** | **{acc['before']:.3f}** | **{acc['after']:.3f}** | **{acc['delta']:+.3f}** "
                 f"| **{score['before']:.3f}** | **{score['after']:.3f}** | **{score['delta']:+.3f}** |")
    return lines


def _first_samples_by_task(run: Path) -> dict[str, list[dict[str, Any]]]:
    """Sample 0 of every prompt of a benchmark folder, grouped by task, in suite order: its
    ``results.jsonl`` row with ``file`` (the saved image or video) added."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in read_jsonl(run / "results.jsonl", "benchmark results"):
        if row["sample_index"] == 0 and (run / row["filename"]).is_file():
            rows.setdefault(row["tag"], []).append({**row, "file": run / row["filename"]})
    return rows


_VIDEO_SUFFIXES = {".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif"}


def _first_frame(file: Path):
    """A saved sample as a PIL image: the image itself, or a video's first frame."""
    from PIL import Image

    from diffalign.media import load_video, tensor_to_pil

    if file.suffix.lower() in _VIDEO_SUFFIXES:
        return tensor_to_pil(load_video(file, max_frames=1))[0]
    return Image.open(file).convert("RGB")


CAPTION_LINES = 4  # prompt lines + the verdict line under each tile
_LINE_HEIGHT = 11
#: pixels of caption under each tile of a captioned grid
CAPTION_BAND = CAPTION_LINES * _LINE_HEIGHT + 4
_PASS, _FAIL = (0, 120, 0), (190, 0, 0)


def _wrap(draw, text: str, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last line is cut with '..' when the text does not fit."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and draw.textlength(lines[-1] + "..") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += ".."
    return lines


def _caption(draw, row: Mapping[str, Any], x: int, y: int, width: int) -> None:
    """The prompt, then the judge's verdict (green pass / red fail with its first reason) under a tile."""
    prompt = str(row.get("prompt", "")).removeprefix("a photo of ")
    lines = _wrap(draw, prompt, width, CAPTION_LINES - 1)
    for i, line in enumerate(lines):
        draw.text((x, y + i * _LINE_HEIGHT), line, fill="black")
    if "correct" in row:
        reason = str(row.get("reason") or "").split("\n")[0].removeprefix("expected ")
        verdict = "pass" if row["correct"] else f"fail: {reason}" if reason else "fail"
        verdict = _wrap(draw, verdict, width, 1)[0]
        draw.text((x, y + len(lines) * _LINE_HEIGHT), verdict, fill=_PASS if row["correct"] else _FAIL)


def before_after_grid(before: str | Path, after: str | Path, path: str | Path, tile: int = 96,
                      labels: tuple[str, str] = ("before", "after"), captions: bool = True) -> Path | None:
    """One row per task, one column per prompt (same seed): ``before``'s sample on the left panel,
    ``after``'s on the right. With ``captions`` each tile has its prompt and the judge's verdict under it
    (green pass, red fail and why), so the grid says what changed without the JSON. None when the
    folders hold no saved images."""
    from PIL import Image, ImageDraw

    left, right = _first_samples_by_task(Path(before)), _first_samples_by_task(Path(after))
    tasks = [t for t in left if t in right]
    if not tasks:
        return None
    columns = max(len(left[t]) for t in tasks)
    label, gap, header, pad = 92, 16, 18, 2
    band = CAPTION_BAND if captions else 0
    cell_w, cell_h = max(tile, 120 if captions else 0) + pad, tile + band + pad
    panel = columns * cell_w
    canvas = Image.new("RGB", (label + 2 * panel + gap, header + len(tasks) * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label, 3), labels[0], fill="black")
    draw.text((label + panel + gap, 3), labels[1], fill="black")
    for r, task in enumerate(tasks):
        y = header + r * cell_h
        draw.text((2, y + tile // 2 - 6), task, fill="black")
        for x0, rows in ((label, left[task]), (label + panel + gap, right[task])):
            for c, row in enumerate(rows):
                image = _first_frame(row["file"]).resize((tile, tile), Image.NEAREST)
                canvas.paste(image, (x0 + c * cell_w, y))
                if captions:
                    _caption(draw, row, x0 + c * cell_w, y + tile + 2, cell_w - pad - 2)
    path = Path(path)
    canvas.save(path)
    return path


def before_after_video(before: str | Path, after: str | Path, path: str | Path, fps: int = 8, scale: int = 3) -> Path | None:
    """The video twin of :func:`before_after_grid`: an MP4 whose rows are tasks, each row the saved first
    videos of its prompts before, then the same prompts and seeds after. None when no videos were saved."""
    import torch

    from diffalign.media import load_video, save_video_grid

    left, right = _first_samples_by_task(Path(before)), _first_samples_by_task(Path(after))
    rows = [(left[t], right[t]) for t in left if t in right]
    rows = [(a, b) for a, b in rows if a and a[0]["file"].suffix.lower() in _VIDEO_SUFFIXES]
    if not rows:
        return None
    columns = max(len(a) for a, _ in rows)
    videos = []
    for a, b in rows:
        for side in (a, b):
            clips = [load_video(row["file"]) for row in side[:columns]]
            blank = torch.ones_like(clips[0])
            videos.extend(clips + [blank] * (columns - len(clips)))
    return save_video_grid(torch.stack(videos), path, nrow=2 * columns, fps=fps, scale=scale)


def write_comparison(out: str | Path, before: Mapping[str, Any], after: Mapping[str, Any], *, title: str,
                     base: str, trained: str, notes: str = "") -> dict[str, Path]:
    """``compare.md``, ``compare.json`` and ``before_after.png`` from ``out/before`` and ``out/after``."""
    out = Path(out)
    rows = comparison_rows(before, after)
    (out / "compare.json").write_text(json.dumps({"base": base, "trained": trained, **rows,
                                                  "before": dict(before), "after": dict(after)}, indent=2) + "\n")
    text = [f"# {title}", "", f"Before: `{base}`. After: `{trained}`. Same prompts, seeds and sampler settings.", ""]
    if notes:
        text += [notes, ""]
    text += comparison_table(before, after)
    (out / "compare.md").write_text("\n".join(text) + "\n")
    paths = {"compare": out / "compare.md", "compare_json": out / "compare.json"}
    grid = before_after_grid(out / "before", out / "after", out / "before_after.png")
    if grid is not None:
        paths["before_after"] = grid
    return paths


def evaluate_before_after(
    base: str,
    trained,
    evaluate: Callable[[Any, Path, str], dict[str, Any]],
    out: str | Path,
    *,
    title: str,
    device: str | None = None,
    notes: str = "",
) -> Comparison:
    """Evaluate the base model into ``out/before``, put ``trained`` (:class:`diffalign.trained.TrainedWeights`)
    on it, evaluate again into ``out/after`` and write the comparison. The weights are checked against
    the model before the first image is sampled."""
    from diffalign.pipelines import load

    out = Path(out)
    adapter = load(base, device=device)
    trained.check(adapter)
    before = evaluate(adapter, out / "before", base)
    trained.apply(adapter)
    after = evaluate(adapter, out / "after", trained.label)
    paths = write_comparison(out, before, after, title=title, base=base, trained=trained.label, notes=notes)
    return Comparison(before=before, after=after, paths=paths)
