"""Make preference data: sample and score (``build``), AI-feedback relabelling (``relabel``), top-k experts (``topk``).

Every command writes manifests in the schemas of :mod:`diffalign.preferences.sources` (paths relative to the
output folder) and ``scores.jsonl``, the scores in :mod:`diffalign.scorers.batch`'s row format (``file, prompt,
modality, score, error``), flushed after every batch; re-running into the same folder scores only what is missing.

* **Soft labels** (SmPO's smoothed preference, with the normalisation taken from the data instead of SmPO's
  PickScore constants): with ``s' = (s - min s) / (max s - min s)`` over every scored image,
  ``p = softmax(s'_w, s'_l)_w = σ(s'_w - s'_l)`` in [0.5, σ(1)].
* **build**: ``images_per_prompt`` samples per prompt (initial noise seeded by ``(seed, prompt index)``, so a
  resumed build reproduces the uninterrupted one); pairs are the best vs the worst sample of a prompt (equal
  scores: no pair), or with ``pairing="every"`` every two samples of the same caption whose scores differ
  (up to ``n(n-1)/2`` pairs from ``n`` samples, captions drawn more than once pooled); labels mark a sample desirable when its score is above its prompt's median (or above
  ``threshold``); winners are each prompt's best sample.
* **relabel**: both images of every pair are scored; the winner is the higher score (equal scores: dropped).
* **topk**: the ``k`` best-scored unique (image, prompt) items of a dataset, as an experts manifest.
* **experts** (ShapesWorld): the rendered ground truth of each caption, an exact expert set.
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from diffalign.errors import UserError, read_json
from diffalign.media import MediaError, save_image, save_video
from diffalign.scorers.base import Scorer
from diffalign.scorers.batch import ResultStore, score_media

from .config import DataConfig
from .sources import PreferenceDataError, PreferenceDataset, open_preferences

if TYPE_CHECKING:
    from diffalign.pipelines import PipelineAdapter

logger = logging.getLogger(__name__)

__all__ = ["build_preferences", "open_dataset", "relabel_preferences", "shapes_experts", "soft_label", "topk_preferences"]

SCORES_FILE = "scores.jsonl"
#: how ``build`` pairs the samples of a prompt
PAIRINGS = ("best_worst", "every")
SCORE_COLUMN = "score"


def soft_label(winner: float, loser: float, low: float, high: float) -> float:
    """``σ((winner - loser) / (high - low))``: the softmax of the min/max-normalised scores, for the winner."""
    span = high - low
    return 1.0 / (1.0 + math.exp(-(winner - loser) / span)) if span > 0 else 0.5


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(temporary, path)
    return path


def _save_media(media: torch.Tensor, path: Path) -> Path:
    return save_video(media, path) if media.ndim == 4 else save_image(media, path)


def _check_settings(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """A new folder gets ``settings.json``; resuming needs the same settings; anything else is refused."""
    path = out / "settings.json"
    if path.exists():
        saved = read_json(path, "preference data settings")
        if not resume:
            raise FileExistsError(f"{out} already holds preference data; pass --resume to continue it or use another --out")
        changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
        if changed:
            raise ValueError(f"{out} was built with other settings ({'; '.join(changed)}); use another --out")
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a diffalign preference folder; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- build
def sampling_defaults(adapter: PipelineAdapter) -> dict[str, Any]:
    """``diffalign_defaults.json`` beside the model, if any (steps, guidance, size)."""
    from diffalign.sample import model_defaults

    return model_defaults(adapter)


def build_preferences(
    adapter: PipelineAdapter,
    prompts: Sequence[str],
    scorer: Scorer,
    out: str | Path,
    *,
    images_per_prompt: int = 4,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 8,
    threshold: float | None = None,
    pairing: str = "best_worst",
    resume: bool = False,
    progress: bool = False,
    size: dict[str, int] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample ``images_per_prompt`` media per prompt, score them and write ``pairs.jsonl``, ``labels.jsonl``,
    ``winners.jsonl`` and ``scores.jsonl`` into ``out`` (see the module docstring); returns the summary.

    ``batch_size`` prompts are sampled together. Prompts already written (``resume``) are not sampled again.
    ``size`` (``height``, ``width``, ``num_frames``) overrides the model's default sample size; ``settings``
    are recorded in ``settings.json`` with the sampling settings, and a resumed build must match them.
    """
    prompts = list(prompts)
    if not prompts:
        raise UserError("no prompts to build preference data from")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise UserError("empty prompt in the prompt list")
    if images_per_prompt < 2:
        raise UserError(f"images_per_prompt must be >= 2 to compare samples, got {images_per_prompt}")
    if threshold is not None and not math.isfinite(threshold):
        raise UserError(f"threshold must be a finite number, got {threshold}")
    if pairing not in PAIRINGS:
        raise UserError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    defaults = sampling_defaults(adapter)
    steps = int(steps or defaults.get("num_inference_steps", 20))
    guidance = float(guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 1.0))
    size = {**{k: defaults[k] for k in ("height", "width", "num_frames") if k in defaults}, **(size or {})}
    out = Path(out)
    _check_settings(out, {**(settings or {}), "scorer": scorer.name, "images_per_prompt": images_per_prompt,
                          "steps": steps, "guidance_scale": guidance, "seed": seed, "size": size}, resume)
    store = ResultStore(out / SCORES_FILE, [SCORE_COLUMN])
    written: dict[int, list[dict]] = {}
    for row in store.rows:
        written.setdefault(_prompt_index(row["file"]), []).append(row)
    for index, rows in written.items():
        if index >= len(prompts) or rows[0]["prompt"] != prompts[index]:
            raise ValueError(f"{out / SCORES_FILE} holds prompt {index} {rows[0]['prompt']!r}, not this run's; use another --out")
    pending = [i for i in range(len(prompts)) if len(written.get(i, [])) < images_per_prompt]
    if written:
        logger.info("%d prompt(s) already in %s; sampling the other %d", len(prompts) - len(pending), out, len(pending))

    from diffalign.training.prompts import derive_seed
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), unit="prompt", desc="building", disable=not progress)
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        latents = torch.cat([
            adapter.prepare_latents(images_per_prompt, torch.Generator().manual_seed(derive_seed(seed, "build", i)), **size)
            for i in chunk
        ])
        expanded = [prompts[i] for i in chunk for _ in range(images_per_prompt)]
        with torch.no_grad():
            media = adapter.sample(expanded, steps=steps, guidance_scale=guidance, latents=latents, **size).media.detach().float().cpu()
        scores = score_media(scorer, list(media), expanded)
        rows = []
        for position, (index, sample) in enumerate((i, j) for i in chunk for j in range(images_per_prompt)):
            suffix = ".mp4" if media.ndim == 5 else ".png"
            name = f"images/{index:06d}_{sample}{suffix}"
            _save_media(media[position], out / name)
            value = scores[position]
            rows.append({"file": name, "prompt": prompts[index], "modality": "video" if media.ndim == 5 else "image",
                         SCORE_COLUMN: None if isinstance(value, str) else value, "error": value if isinstance(value, str) else None})
        store.append(rows)  # a prompt cut short by a crash is sampled again identically; the last row of a file wins
        bar.update(len(chunk))
    bar.close()
    return _write_build_manifests(out, store.rows, prompts, threshold, pairing)


def _prompt_index(file: str) -> int:
    return int(Path(file).stem.split("_")[0])


def _pair(prompt: str, win: dict, lose: dict, low: float, high: float) -> dict[str, Any]:
    return {"prompt": prompt, "preferred": win["file"], "rejected": lose["file"],
            "soft_label": soft_label(win[SCORE_COLUMN], lose[SCORE_COLUMN], low, high),
            "preferred_score": win[SCORE_COLUMN], "rejected_score": lose[SCORE_COLUMN]}


def _every_pair(groups: dict[str, list[dict]], low: float, high: float) -> list[dict[str, Any]]:
    """Every two samples of the same caption whose scores differ, the better one preferred."""
    pairs = []
    for prompt, group in groups.items():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a[SCORE_COLUMN] != b[SCORE_COLUMN]:
                    win, lose = (a, b) if a[SCORE_COLUMN] > b[SCORE_COLUMN] else (b, a)
                    pairs.append(_pair(prompt, win, lose, low, high))
    return pairs


def _write_build_manifests(out: Path, rows: list[dict], prompts: list[str], threshold: float | None,
                           pairing: str = "best_worst") -> dict[str, Any]:
    by_prompt: dict[int, dict[str, dict]] = {}
    for row in rows:  # the last row of a file wins
        by_prompt.setdefault(_prompt_index(row["file"]), {})[row["file"]] = row
    scored = [r for group in by_prompt.values() for r in group.values() if r[SCORE_COLUMN] is not None]
    failed = sum(1 for group in by_prompt.values() for r in group.values() if r[SCORE_COLUMN] is None)
    values = [float(r[SCORE_COLUMN]) for r in scored]
    low, high = (min(values), max(values)) if values else (0.0, 0.0)
    pairs, labels, winners, ties = [], [], [], 0
    by_caption: dict[str, list[dict]] = {}
    for index in sorted(by_prompt):
        group = sorted((r for r in by_prompt[index].values() if r[SCORE_COLUMN] is not None), key=lambda r: r["file"])
        if not group:
            continue
        prompt = prompts[index]
        best = max(group, key=lambda r: r[SCORE_COLUMN])
        worst = min(group, key=lambda r: r[SCORE_COLUMN])
        winners.append({"prompt": prompt, "media": best["file"], "score": best[SCORE_COLUMN]})
        by_caption.setdefault(prompt, []).extend(group)
        if best[SCORE_COLUMN] > worst[SCORE_COLUMN]:
            pairs.append(_pair(prompt, best, worst, low, high))
        else:
            ties += 1
        cut = threshold if threshold is not None else statistics.median(r[SCORE_COLUMN] for r in group)
        labels += [{"prompt": prompt, "media": r["file"], "desirable": r[SCORE_COLUMN] > cut, "score": r[SCORE_COLUMN]} for r in group]
    if pairing == "every":
        pairs = _every_pair(by_caption, low, high)
    for name, manifest in (("pairs", pairs), ("labels", labels), ("winners", winners)):
        _write_jsonl(out / f"{name}.jsonl", manifest)
    summary = {
        "prompts": len(by_prompt), "images": len(scored) + failed, "failed": failed, "pairs": len(pairs), "pairing": pairing,
        "ties": ties,
        "desirable": sum(r["desirable"] for r in labels), "labels": len(labels), "winners": len(winners),
        "score": {"min": low if values else None, "max": high if values else None,
                  "mean": statistics.fmean(values) if values else None},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------------------- relabel / topk
def open_dataset(data: str | Path | DataConfig | PreferenceDataset, kinds: Sequence[str]) -> PreferenceDataset:
    """``data`` opened as the first of ``kinds`` its source can give."""
    if isinstance(data, PreferenceDataset):
        if data.kind not in kinds:
            raise PreferenceDataError(f"{data.source}: needs {' or '.join(kinds)} examples, got {data.kind}")
        return data
    config = data if isinstance(data, DataConfig) else DataConfig(source=str(data))
    last: PreferenceDataError | None = None
    for kind in kinds:
        try:
            return open_preferences(config, kind=kind)
        except PreferenceDataError as err:
            if "cannot give" not in str(err):
                raise
            last = err
    raise last  # type: ignore[misc]


def _score_items(
    dataset: PreferenceDataset, items: list[tuple[int, int]], scorer: Scorer, out: Path, batch_size: int, progress: bool,
) -> dict[tuple[int, int], tuple[str, float | None, str | None]]:
    """Score media ``k`` of row ``i`` for every ``(i, k)``: ``(i, k) -> (file, score, error)``.

    ``file`` is the media's own path (absolute) when it is a file, else a PNG written under ``out/media``;
    identical (file, prompt) items are scored once; items already in ``out/scores.jsonl`` are not scored again.
    """
    store = ResultStore(out / SCORES_FILE, [SCORE_COLUMN])
    done = {(r["file"], r["prompt"]): r for r in store.rows}
    keys: dict[tuple[int, int], tuple[str, str]] = {}
    for index, k in items:
        path = dataset.media_paths(index)[k]
        if path is not None:
            file = str(path.resolve())
        else:
            file = "media/" + "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.media_keys(index)[k]) + ".png"
        keys[(index, k)] = (file, dataset.prompt(index))
    todo: dict[tuple[str, str], tuple[int, int]] = {}
    for item, key in keys.items():
        if key not in done:
            todo.setdefault(key, item)
    if len(keys) > len(todo):
        logger.info("%d item(s) already scored in %s; scoring %d", len(set(keys.values())) - len(todo), out / SCORES_FILE, len(todo))

    from tqdm.auto import tqdm

    pending = list(todo.items())
    bar = tqdm(total=len(pending), unit="item", desc="scoring", disable=not progress)
    for start in range(0, len(pending), batch_size):
        rows, media, prompts = [], [], []
        for (file, prompt), (index, k) in pending[start : start + batch_size]:
            row = {"file": file, "prompt": prompt, "modality": None, SCORE_COLUMN: None, "error": None}
            try:
                item = dataset.media(index, k)
                row["modality"] = "video" if item.ndim == 4 else "image"
                if not os.path.isabs(file) and not (out / file).exists():
                    _save_media(item, out / file)
                media.append(item)
                prompts.append(prompt)
            except (MediaError, OSError, ValueError) as err:
                row["error"] = str(err)
            rows.append(row)
        scores = iter(score_media(scorer, media, prompts) if media else [])
        for row in rows:
            if row["error"] is None:
                value = next(scores)
                row[SCORE_COLUMN], row["error"] = (None, value) if isinstance(value, str) else (value, None)
        store.append(rows)
        bar.update(len(rows))
    bar.close()
    latest = {(r["file"], r["prompt"]): r for r in store.rows}
    return {item: (key[0], latest[key][SCORE_COLUMN], latest[key]["error"]) for item, key in keys.items()}


def _relative(file: str, out: Path) -> str:
    return os.path.relpath(file, out) if os.path.isabs(file) else file


def relabel_preferences(
    data: str | Path | DataConfig | PreferenceDataset, scorer: Scorer, out: str | Path, *, batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """AI-feedback relabelling of a pairs dataset: score both images, winner by score, soft label from the
    min/max-normalised scores (module docstring). Writes ``out/pairs.jsonl`` (with ``preferred_score``,
    ``rejected_score``, ``source_row`` and ``flipped``: the score order disagrees with the data's label),
    ``scores.jsonl`` and ``summary.json``; resumable."""
    dataset = open_dataset(data, ("pairs",))
    out = Path(out)
    _check_settings(out, {"source": dataset.source, "scorer": scorer.name, "command": "relabel"}, resume=True)
    items = [(i, k) for i in range(len(dataset)) for k in (0, 1)]
    scored = _score_items(dataset, items, scorer, out, batch_size, progress)
    values = [s for _, s, _ in scored.values() if s is not None]
    low, high = (min(values), max(values)) if values else (0.0, 0.0)
    pairs, ties, failed, flipped = [], 0, [], 0
    for index in range(len(dataset)):
        (file_a, score_a, error_a), (file_b, score_b, error_b) = scored[(index, 0)], scored[(index, 1)]
        if score_a is None or score_b is None:
            failed.append({"row_id": dataset.row_id(index), "reason": error_a or error_b})
            continue
        if score_a == score_b:
            ties += 1
            continue
        swap = score_b > score_a
        flipped += swap
        (win, win_score), (lose, lose_score) = ((file_b, score_b), (file_a, score_a)) if swap else ((file_a, score_a), (file_b, score_b))
        pairs.append({"prompt": dataset.prompt(index), "preferred": _relative(win, out), "rejected": _relative(lose, out),
                      "soft_label": soft_label(win_score, lose_score, low, high), "preferred_score": win_score,
                      "rejected_score": lose_score, "source_row": dataset.row_id(index), "flipped": swap})
    _write_jsonl(out / "pairs.jsonl", pairs)
    summary = {"source": dataset.source, "pairs_in": len(dataset), "pairs": len(pairs), "flipped": flipped, "ties": ties,
               "failed": failed, "score": {"min": low if values else None, "max": high if values else None}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def topk_preferences(
    data: str | Path | DataConfig | PreferenceDataset, scorer: Scorer, k: int, out: str | Path, *, batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """The ``k`` best-scored unique (media, prompt) items of a dataset (every image of a pairs or labels
    source, else its winners) as ``out/experts.jsonl`` (``prompt, media, score, source_row``), best first."""
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    dataset = open_dataset(data, ("labels", "winners"))
    out = Path(out)
    _check_settings(out, {"source": dataset.source, "scorer": scorer.name, "command": "topk"}, resume=True)
    scored = _score_items(dataset, [(i, 0) for i in range(len(dataset))], scorer, out, batch_size, progress)
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    failed = []
    for index in range(len(dataset)):
        file, score, error = scored[(index, 0)]
        if score is None:
            failed.append({"row_id": dataset.row_id(index), "reason": error})
            continue
        unique.setdefault((file, dataset.prompt(index)), {"prompt": dataset.prompt(index), "media": _relative(file, out),
                                                          "score": score, "source_row": dataset.row_id(index)})
    experts = sorted(unique.values(), key=lambda r: -r["score"])[:k]
    _write_jsonl(out / "experts.jsonl", experts)
    summary = {"source": dataset.source, "items": len(unique), "k": k, "experts": len(experts), "failed": failed,
               "threshold": experts[-1]["score"] if experts else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def shapes_experts(prompts: Sequence[str], out: str | Path, *, seed: int = 0, size: int | None = None,
                   frames: int | None = None) -> dict[str, Any]:
    """ShapesWorld's exact experts: the rendered ground truth of each caption (layout seeded by ``(seed,
    prompt index)``) as ``out/experts.jsonl`` (``prompt, media``), PNGs under ``out/images``; a motion caption
    ("a red circle moving to the right") is rendered as a ``frames``-frame clip (default
    :data:`~diffalign.shapes.motion.DEFAULT_FRAMES`; ``shapes-video`` takes 9), an MP4 under ``out/videos``."""
    import random

    from diffalign.shapes import motion, world
    from diffalign.training.prompts import derive_seed

    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to render")
    frames = motion.check_frames(motion.DEFAULT_FRAMES if frames is None else frames)
    parsed = []
    for index, prompt in enumerate(prompts):  # every caption is checked before anything is written
        try:
            parsed.append(("image", world.parse_caption(prompt)))
        except world.GrammarError as image_error:
            try:
                parsed.append(("video", motion.parse_motion_caption(prompt)))
            except world.GrammarError:
                raise ValueError(f"prompt {index} {prompt!r} is not a ShapesWorld caption ({image_error})") from image_error
    out = Path(out)
    settings = {"command": "experts", "source": "shapes ground truth", "seed": seed, "size": size}
    if any(kind == "video" for kind, _ in parsed):
        settings["frames"] = frames
    _check_settings(out, settings, resume=True)
    rows = []
    for index, (prompt, (kind, metadata)) in enumerate(zip(prompts, parsed)):
        rng = random.Random(derive_seed(seed, "expert", index))
        if kind == "video":
            scene = motion.motion_scene_for(metadata, rng, frames)
            name = f"videos/{index:06d}.mp4"
            save_video(motion.render_video(scene, frames, size or motion.VIDEO_SIZE), out / name)
        else:
            name = f"images/{index:06d}.png"
            save_image(world.render_tensor(world.scene_for(metadata, rng), size or world.IMAGE_SIZE), out / name)
        rows.append({"prompt": prompt, "media": name})
    _write_jsonl(out / "experts.jsonl", rows)
    summary = {"experts": len(rows), "source": "shapes ground truth"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
