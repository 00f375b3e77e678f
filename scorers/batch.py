"""Score image and video files with scorer plugins: resumable, batched, one row per file.

>>> from diffalign.scorers.batch import score_files
>>> result = score_files(["samples/"], ["pickscore", "aesthetic"], prompts="prompts.jsonl",
...                      out="scores.csv", device="cuda")                        # doctest: +SKIP
>>> result.summary["scorers"]["pickscore"]["mean"]                               # doctest: +SKIP

* **Inputs**: files, folders (recursive) and glob patterns. Image and video files are scored; a
  ``.txt`` file next to a media file with the same stem is that file's prompt; other files found in
  folders are listed as ``skipped`` in the summary. A file named explicitly is always attempted.
* **Prompts**: a JSONL or CSV table with a ``file`` (or ``path``/``filename``) and a ``prompt`` (or
  ``caption``) column, or a ``{file: prompt}`` dict; entries match a file by path (relative to the
  table's folder or the working directory) or, failing that, by file name. Else the sidecar ``.txt``.
  Scorers that need prompts report an error for a file without one; prompt-free scorers still score it.
* **Output** (by suffix): ``.csv``, ``.jsonl`` or ``.parquet``; columns ``file, prompt, modality``,
  one per scorer, and ``error`` (empty when every scorer succeeded). Rows are flushed after every
  batch. Re-running with the same output skips files already in it (``retry_failed`` retries the
  ones with an error; their new row is appended and the last row of a file wins). Parquet cannot be
  appended to, so its rows go to ``<out>.partial.jsonl`` while running and the parquet file is
  rewritten atomically from both at the end.
* **Errors**: unreadable, corrupt or truncated files and scorer failures become that file's
  ``error``; they never stop the run. A failing batch is retried item by item to isolate the culprit.
* **Summary**: per scorer mean, population std, min, max and count of finite scores over every row
  in the output; counts of ok and failed files; written to ``<out>.summary.json``.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from diffalign.errors import UserError, existing_path, number, read_csv, read_jsonl, read_text, scorer_spec
from diffalign.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, MediaError, even_frames, expand_paths, load_image, load_video
from diffalign.scorers.base import Scorer, load

logger = logging.getLogger(__name__)

MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")
FIXED_COLUMNS = ("file", "prompt", "modality")
FILE_KEYS = ("file", "path", "filename")
PROMPT_KEYS = ("prompt", "caption")


# -- scorers --------------------------------------------------------------------------------------
def resolve_scorers(
    scorers: str | Scorer | Sequence[str | Scorer] | Mapping[str, str | Scorer],
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Scorer]:
    """Column name -> scorer.

    A string without weights is a comma-separated list of scorers, one column each
    (``"pickscore,aesthetic"``); a string with weights is one weighted-sum column
    (``"pickscore:0.7,aesthetic:0.3"``). ``options[column]`` are passed to :func:`load`.
    """
    options = dict(options or {})
    if isinstance(scorers, (str, Scorer)):
        scorers = [scorers]
    items: list[tuple[str, str | Scorer]] = []
    if isinstance(scorers, Mapping):
        items = list(scorers.items())
    else:
        for entry in scorers:
            if isinstance(entry, Scorer):
                items.append((entry.name, entry))
            elif ":" in entry:
                items.append((entry.replace(" ", ""), entry))
            else:
                items += [(name.strip(), name.strip()) for name in entry.split(",") if name.strip()]
    if not items:
        raise ValueError("no scorer given")
    resolved: dict[str, Scorer] = {}
    for column, scorer in items:
        if column in resolved:
            raise ValueError(f"scorer column {column!r} given twice")
        if column in (*FIXED_COLUMNS, "error"):
            raise ValueError(f"scorer column name {column!r} clashes with a fixed output column")
        resolved[column] = scorer if isinstance(scorer, Scorer) else load(scorer, **dict(options.pop(column, {})))
    if options:
        raise ValueError(f"options given for scorer(s) {sorted(options)} that are not being used: {sorted(resolved)}")
    return resolved


# -- files and prompts -------------------------------------------------------------------------------
@dataclass
class FileList:
    """Files to score, and files found in folders that are neither media nor prompt sidecars."""

    files: list[Path]
    skipped: list[Path] = field(default_factory=list)


def collect_files(inputs: Iterable[str | Path], exclude: Iterable[Path] = ()) -> FileList:
    """Expand files, folders and globs; keep media files, sidecar prompts aside, list the rest as skipped."""
    excluded = {Path(p).resolve() for p in exclude}
    files: dict[Path, None] = {}
    skipped: dict[Path, None] = {}
    for item in inputs:
        explicit = Path(item).is_file()
        for path in expand_paths([item]):
            if path.resolve() in excluded:
                continue
            if explicit or path.suffix.lower() in MEDIA_SUFFIXES:
                files[path] = None
            elif not (path.suffix.lower() == ".txt" and _has_media_sibling(path)):
                skipped[path] = None
    return FileList(list(files), [p for p in skipped if p not in files])


def _has_media_sibling(text_file: Path) -> bool:
    return any(text_file.with_suffix(suffix).exists() or text_file.with_suffix(suffix.upper()).exists() for suffix in MEDIA_SUFFIXES)


class PromptTable:
    """File -> prompt, from a JSONL/CSV table or a mapping, falling back to sidecar ``.txt`` files."""

    def __init__(self, entries: Mapping[str, str] | None = None, base: Path | None = None):
        self.by_path: dict[Path, str] = {}
        self.by_name: dict[str, str | None] = {}
        for key, prompt in (entries or {}).items():
            key_path = Path(key)
            candidates = [key_path] if key_path.is_absolute() else [Path.cwd() / key_path] + ([base / key_path] if base else [])
            for candidate in candidates:
                self.by_path[candidate.resolve()] = prompt
            # a file name shared by two entries with different prompts cannot be matched by name
            name = key_path.name
            self.by_name[name] = prompt if self.by_name.get(name, prompt) == prompt else None

    @classmethod
    def from_file(cls, path: str | Path) -> PromptTable:
        path = existing_path(path, "prompts file", kind="file")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            records = read_jsonl(path, "prompts file")
        elif suffix == ".csv":
            records = read_csv(path, "prompts file")
        else:
            raise UserError(f"prompts file {path}: expected .jsonl or .csv, got {suffix or 'no suffix'}")
        entries = {}
        for index, record in enumerate(records, 1):
            file_key = next((k for k in FILE_KEYS if record.get(k)), None)
            prompt_key = next((k for k in PROMPT_KEYS if k in record and record[k] is not None), None)
            if file_key is None or prompt_key is None:
                raise UserError(
                    f"prompts file {path}, record {index}: needs a {'/'.join(FILE_KEYS)} column and a "
                    f"{'/'.join(PROMPT_KEYS)} column, got {sorted(record)}"
                )
            entries[str(record[file_key])] = str(record[prompt_key])
        return cls(entries, base=path.parent)

    def get(self, file: Path) -> str | None:
        prompt = self.by_path.get(file.resolve())
        if prompt is None:
            prompt = self.by_name.get(file.name)
        if prompt is None:
            sidecar = file.with_suffix(".txt")
            if sidecar != file and sidecar.is_file():
                prompt = read_text(sidecar, "prompt sidecar").strip()
        return prompt


def _prompt_table(prompts: str | Path | Mapping[str, str] | PromptTable | None) -> PromptTable:
    if prompts is None:
        return PromptTable()
    if isinstance(prompts, PromptTable):
        return prompts
    if isinstance(prompts, Mapping):
        return PromptTable(prompts)
    return PromptTable.from_file(prompts)


# -- media ----------------------------------------------------------------------------------------
def load_media(path: Path, video_frames: int | None = None) -> tuple[str, torch.Tensor]:
    """``("image", 3×H×W)`` or ``("video", T×3×H×W)``; MediaError naming the file if unusable."""

    suffix = path.suffix.lower()
    if suffix not in MEDIA_SUFFIXES:
        raise MediaError(f"{path}: not an image or video file (suffix {suffix or 'none'})")
    if suffix in VIDEO_SUFFIXES and (suffix not in IMAGE_SUFFIXES or _frame_count(path) > 1):
        return "video", even_frames(load_video(path), video_frames)
    return "image", load_image(path)


def _frame_count(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception as err:
        raise MediaError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


# -- output ---------------------------------------------------------------------------------------
class ResultStore:
    """Append-only rows in CSV, JSONL or Parquet (through a JSONL journal), read back for resuming."""

    def __init__(self, path: str | Path, score_columns: Sequence[str]):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in OUTPUT_SUFFIXES:
            raise ValueError(f"output {self.path}: expected a {', '.join(OUTPUT_SUFFIXES)} file")
        self.columns = [*FIXED_COLUMNS, *score_columns, "error"]
        self.score_columns = list(score_columns)
        self.journal = self.path.with_name(self.path.name + ".partial.jsonl") if self.format == ".parquet" else self.path
        self.rows = self._read()

    @property
    def summary_path(self) -> Path:
        return self.path.with_name(self.path.name + ".summary.json")

    def _read(self) -> list[dict]:
        rows: list[dict] = []
        if self.format == ".parquet" and self.path.exists():
            import pyarrow.parquet as pq

            rows += pq.read_table(self.path).to_pylist()
        if self.journal.exists() and self.journal.stat().st_size:
            if self.format == ".csv":
                with open(self.journal, newline="", encoding="utf-8") as handle:
                    reader = csv.DictReader(handle)
                    found = list(reader.fieldnames or [])
                    self._check_columns(found)
                    for record in reader:
                        if record.get("error") is None:  # a row cut short by a crash: score it again
                            continue
                        rows.append(self._from_csv(record))
            else:
                for number, line in enumerate(self.journal.read_text(encoding="utf-8").splitlines(), 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        logger.warning("%s:%d: unreadable row (cut short?) ignored; that file is scored again", self.journal, number)
        if rows:
            self._check_columns(list(rows[0]))
        return rows

    def _check_columns(self, found: list[str]) -> None:
        if found != self.columns:
            raise ValueError(
                f"output {self.path} already holds columns {found}, but this run writes {self.columns}; "
                "use another output file for a different set of scorers"
            )

    def _from_csv(self, record: dict[str, str]) -> dict:
        row: dict[str, Any] = {}
        for column in self.columns:
            value = record.get(column) or None
            row[column] = float(value) if value is not None and column in self.score_columns else value
        return row

    def append(self, rows: list[dict]) -> None:
        """Write rows and flush them to disk before returning."""
        if not rows:
            return
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        new = not self.journal.exists() or self.journal.stat().st_size == 0
        if self.format == ".csv":
            with open(self.journal, "a", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns)
                if new:
                    writer.writeheader()
                writer.writerows({k: ("" if row[k] is None else row[k]) for k in self.columns} for row in rows)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            with open(self.journal, "a", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps({k: row[k] for k in self.columns}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        self.rows += rows

    def finalize(self) -> None:
        """Parquet: rewrite the parquet file (atomically) from its old rows and the journal."""
        if self.format != ".parquet" or not self.journal.exists():
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [(c, pa.string()) for c in FIXED_COLUMNS] + [(c, pa.float64()) for c in self.score_columns] + [("error", pa.string())]
        )
        temporary = self.path.with_name(self.path.name + ".tmp")
        pq.write_table(pa.Table.from_pylist(self.rows, schema=schema), temporary)
        os.replace(temporary, self.path)
        self.journal.unlink()

    def latest(self) -> dict[str, dict]:
        """The last row of each file, keyed by resolved path."""
        return {str(Path(row["file"]).resolve()): row for row in self.rows}


class _MemoryStore(ResultStore):
    """Rows kept in memory only (``out=None``)."""

    def __init__(self, score_columns: Sequence[str]):
        self.path = None
        self.columns = [*FIXED_COLUMNS, *score_columns, "error"]
        self.score_columns = list(score_columns)
        self.rows = []

    def append(self, rows: list[dict]) -> None:
        self.rows += rows

    def finalize(self) -> None:
        pass


# -- results ----------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    """Every row of the output (earlier runs included; the last row per file), and the summary."""

    rows: list[dict]
    summary: dict
    out: Path | None
    scored_now: int
    already_done: int

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.rows if row["error"]]

    @property
    def ok(self) -> bool:
        return not self.failed


def summarize(rows: list[dict], score_columns: Sequence[str], skipped: Sequence[Path] = ()) -> dict:
    """Mean, population std, min, max and count of the finite scores per column; ok/failed counts."""
    scorers = {}
    for column in score_columns:
        values = [float(r[column]) for r in rows if r[column] is not None and math.isfinite(float(r[column]))]
        scorers[column] = {
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.pstdev(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "count": len(values),
        }
    failures = [{"file": r["file"], "error": r["error"]} for r in rows if r["error"]]
    return {
        "files": len(rows),
        "ok": len(rows) - len(failures),
        "failed": len(failures),
        "scorers": scorers,
        "failures": failures,
        "skipped": [str(p) for p in skipped],
    }


# -- the run ----------------------------------------------------------------------------------------
def score_files(
    paths: str | Path | Iterable[str | Path],
    scorers: str | Scorer | Sequence[str | Scorer] | Mapping[str, str | Scorer],
    prompts: str | Path | Mapping[str, str] | None = None,
    out: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    video_frames: int | None = None,
    retry_failed: bool = False,
    scorer_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> BatchResult:
    """Score every image/video file under ``paths`` with every scorer; see the module docstring.

    ``batch_size`` files are loaded at a time (default: the largest scorer ``batch_size``); files
    of one modality and size are stacked and scored together. ``video_frames`` keeps that many
    evenly spaced frames of each video (all by default).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    # everything the user named is checked before any scorer loads its weights
    if batch_size is not None:
        number(batch_size, "batch_size", low=1, integer=True)
    if video_frames is not None:
        number(video_frames, "video_frames", low=1, integer=True)
    if out is not None and Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"output {out}: expected a {', '.join(OUTPUT_SUFFIXES)} file")
    table = _prompt_table(prompts)
    for spec in [scorers] if isinstance(scorers, str) else scorers if isinstance(scorers, (list, tuple)) else []:
        if isinstance(spec, str):
            for part in spec.split(",") if ":" not in spec else [spec]:
                if part.strip():
                    scorer_spec(part.strip(), (scorer_options or {}).get(part.strip()))
    out_files = [] if out is None else [Path(out), Path(out).with_name(Path(out).name + ".summary.json"),
                                        Path(out).with_name(Path(out).name + ".partial.jsonl")]
    found = collect_files(paths, exclude=out_files)
    if not found.files:
        raise UserError(f"no image or video files in {', '.join(map(str, paths))}"
                        + (f" (skipped {len(found.skipped)} other file(s))" if found.skipped else ""))
    for file in found.files:  # a prompt sidecar that cannot be read fails here, before any scorer loads
        table.get(file)
    columns = resolve_scorers(scorers, scorer_options)
    if device is not None:
        for scorer in columns.values():
            scorer.to(device)
    store: ResultStore = ResultStore(out, list(columns)) if out is not None else _MemoryStore(list(columns))

    done = store.latest()
    pending = [f for f in found.files if not _finished(done.get(str(f.resolve())), retry_failed)]
    already_done = len(found.files) - len(pending)
    if already_done:
        logger.info("%d file(s) already in %s; scoring the other %d", already_done, out, len(pending))
    step = int(batch_size or max(s.batch_size for s in columns.values()))
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), unit="file", desc="scoring", disable=not progress)
    try:
        for start in range(0, len(pending), step):
            rows = _score_batch(pending[start : start + step], columns, table, video_frames)
            store.append(rows)
            bar.update(len(rows))
    finally:
        bar.close()
        store.finalize()

    latest = store.latest()
    wanted = {str(f.resolve()) for f in found.files}
    rows = [row for key, row in latest.items() if key in wanted or out is not None]
    summary = summarize(rows, list(columns), found.skipped)
    summary.update({"scored_now": len(pending), "already_done": already_done, "out": None if out is None else str(out)})
    if out is not None:
        store.summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return BatchResult(rows, summary, None if out is None else Path(out), len(pending), already_done)


def _finished(row: dict | None, retry_failed: bool) -> bool:
    return row is not None and not (retry_failed and row["error"])


def _score_batch(files: list[Path], columns: dict[str, Scorer], table: PromptTable, video_frames: int | None) -> list[dict]:
    rows = [{"file": str(f), "prompt": table.get(f), "modality": None, **{c: None for c in columns}, "error": None} for f in files]
    errors: dict[int, list[str]] = defaultdict(list)
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for index, file in enumerate(files):
        try:
            modality, media = load_media(file, video_frames)
        except MediaError as err:
            errors[index].append(str(err))
            continue
        except Exception as err:  # anything else a decoder throws: report, keep going
            errors[index].append(f"{file}: cannot read ({type(err).__name__}: {err})")
            continue
        rows[index]["modality"] = modality
        groups[(modality, tuple(media.shape))].append((index, media))

    for members in groups.values():
        for column, scorer in columns.items():
            usable = [(i, m) for i, m in members if rows[i]["prompt"] is not None or not scorer.needs_prompts]
            for i, _ in members:
                if rows[i]["prompt"] is None and scorer.needs_prompts:
                    errors[i].append(f"{column}: no prompt for this file (no prompts-table entry, no sidecar .txt)")
            for i, value in _run_scorer(scorer, usable, rows).items():
                if isinstance(value, str):
                    errors[i].append(f"{column}: {value}")
                elif not math.isfinite(value):
                    errors[i].append(f"{column}: the scorer returned {value}")
                else:
                    rows[i][column] = value
    for index, messages in errors.items():
        rows[index]["error"] = "; ".join(messages)
    return rows


def _run_scorer(scorer: Scorer, members: list[tuple[int, torch.Tensor]], rows: list[dict]) -> dict[int, float | str]:
    """index -> score, or index -> error message; a failing batch is retried item by item."""
    if not members:
        return {}
    try:
        media = torch.stack([m for _, m in members])
        prompts = [rows[i]["prompt"] for i, _ in members] if scorer.needs_prompts else None
        with torch.no_grad():
            scores = scorer(media, prompts).detach().float().cpu()
        return {i: float(s) for (i, _), s in zip(members, scores)}
    except Exception as err:
        if len(members) == 1:
            logger.debug("scorer %s failed on %s", scorer.name, rows[members[0][0]]["file"], exc_info=True)
            return {members[0][0]: f"{type(err).__name__}: {err}"}
        logger.info("scorer %s failed on a batch of %d (%s); scoring them one by one", scorer.name, len(members), err)
        results: dict[int, float | str] = {}
        for member in members:
            results.update(_run_scorer(scorer, [member], rows))
        return results


def score_media(scorer: Scorer, media: Sequence[torch.Tensor], prompts: Sequence[str | None]) -> list[float | str]:
    """Score in-memory media items (``C×H×W`` / ``T×C×H×W``), stacked by shape, like :func:`score_files`
    scores files: one float per item, or that item's error message (a failing batch is retried item by item;
    a non-finite score is an error)."""
    if len(media) != len(prompts):
        raise ValueError(f"{len(media)} media items but {len(prompts)} prompts")
    rows = [{"prompt": prompt, "file": f"item {index}"} for index, prompt in enumerate(prompts)]
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for index, item in enumerate(media):
        groups[tuple(item.shape)].append((index, item))
    results: list[float | str] = [""] * len(media)
    for members in groups.values():
        for index, value in _run_scorer(scorer, members, rows).items():
            results[index] = value if isinstance(value, str) or math.isfinite(value) else f"the scorer returned {value}"
    return results
