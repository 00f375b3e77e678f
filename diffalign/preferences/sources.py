"""Preference data sources: one :class:`PreferenceDataset` of one kind from any supported source.

>>> from diffalign.preferences import DataConfig, open_preferences
>>> data = open_preferences(DataConfig(source="yuvalkirstain/pickapic_v2"), kind="pairs")   # doctest: +SKIP
>>> example = data.row(0)      # prompt, media (decoded now), label, row id              # doctest: +SKIP

Sources (``data.source``) and their columns (``data.format = "auto"`` tells them apart by the columns):

* **Pick-a-Pic v2** (``pickapic``), through Hugging Face ``datasets``: a hub id (read from the local cache
  when offline), a folder written by ``save_to_disk``, or parquet files (a file, a folder, a glob). Columns
  ``caption``, ``jpg_0``, ``jpg_1`` (image bytes), ``label_0``, ``label_1``. Ties (``label_0 == 0.5``) are
  dropped; a pair with ``label_0 == 0`` is flipped, so the preferred image always comes first.
* **Diffusion-KTO CSV** (``kto_csv``): ``file_path, caption, label`` with label ``exclusive_win`` (desirable)
  or ``exclusive_lose``; paths relative to the CSV.
* **Manifests** (``manifest``) of local files, JSONL or CSV, paths relative to the manifest; images
  (``.png``, ``.jpg``, ...) and videos (``.mp4``, multi-frame ``.gif``) alike:

  - pairs: ``prompt, preferred, rejected[, soft_label]`` (soft label = P(preferred is better) in
    [0.5, 1], 1 when absent);
  - labels: ``prompt, media, desirable`` (true/false, 1/0);
  - winners or experts: ``prompt, media``.

A source gives its own kind and the kinds derived from it: pairs also give labels (preferred desirable,
rejected not: two rows per pair), winners and experts (the preferred image); labels also give winners
and experts (the desirable rows). Asking for any other kind is an error.

Rows are decoded lazily: :meth:`PreferenceDataset.row` reads the media when called and raises
:class:`~diffalign.media.MediaError` for a row that cannot be decoded (the loader skips and lists it).
"""
from __future__ import annotations

import glob
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from diffalign.errors import UserError, read_csv, read_jsonl
from diffalign.media import MediaError, decode_image

from .batch import KINDS
from .config import DataConfig

__all__ = ["PreferenceDataError", "PreferenceDataset", "PreferenceExample", "open_preferences"]

PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
KTO_COLUMNS = ("file_path", "caption", "label")
KTO_LABELS = {"exclusive_win": 1.0, "exclusive_lose": 0.0}
MANIFEST_COLUMNS = {
    "pairs": ("prompt", "preferred", "rejected"),
    "labels": ("prompt", "media", "desirable"),
    "winners": ("prompt", "media"),
}
#: kinds a source of each native kind can give
DERIVED_KINDS = {
    "pairs": ("pairs", "labels", "winners", "experts"),
    "labels": ("labels", "winners", "experts"),
    "winners": ("winners", "experts"),
}
TABLE_SUFFIXES = (".jsonl", ".csv")


class PreferenceDataError(UserError):
    """A preference source that cannot be used; the message names the source and the problem."""


@dataclass
class PreferenceExample:
    """One decoded row: pairs ``media`` is ``(preferred, rejected)``, other kinds ``(media,)``;
    each ``C×H×W`` (image) or ``T×C×H×W`` (video) in [0, 1]."""

    prompt: str
    media: tuple[torch.Tensor, ...]
    label: float | None
    row_id: str


# ------------------------------------------------------------------------------------------- readers
class _TableReader:
    """Rows of a JSONL/CSV table whose media columns are file paths relative to the table."""

    def __init__(self, records: list[dict[str, Any]], base: Path, name: str, prompt_column: str):
        self.records = records
        self.base = base
        self.name = name
        self.prompt_column = prompt_column

    def __len__(self) -> int:
        return len(self.records)

    def prompt(self, index: int) -> str:
        return str(self.records[index][self.prompt_column])

    def path(self, index: int, slot: str) -> Path:
        value = self.records[index][slot]
        path = Path(str(value))
        return path if path.is_absolute() else self.base / path

    def media_key(self, index: int, slot: str) -> str:
        return str(self.path(index, slot).resolve())

    def media(self, index: int, slot: str) -> torch.Tensor:
        from diffalign.scorers.batch import load_media

        value = self.records[index][slot]
        if value is None or not str(value).strip():
            raise MediaError(f"{self.name} row {index}: empty {slot!r} path")
        return load_media(self.path(index, slot))[1]


class _ArrowReader:
    """Rows of a Hugging Face ``datasets.Dataset`` in the Pick-a-Pic schema (image bytes in ``jpg_0/1``)."""

    def __init__(self, dataset, name: str, media_columns: Sequence[str]):
        import datasets

        for column in media_columns:  # an Image feature: keep the raw bytes, decode per row (corrupt rows are skipped)
            if isinstance(dataset.features.get(column), datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
        self.dataset = dataset
        self.name = name
        self.captions = ["" if c is None else str(c) for c in dataset["caption"]]
        self._columns = {c: dataset.select_columns([c]) for c in media_columns}
        uids = {"jpg_0": "image_0_uid", "jpg_1": "image_1_uid"}
        self._uids = {c: list(dataset[uids[c]]) for c in media_columns if uids.get(c) in dataset.column_names}

    def __len__(self) -> int:
        return len(self.captions)

    def prompt(self, index: int) -> str:
        return self.captions[index]

    def path(self, index: int, slot: str) -> None:
        return None

    def media_key(self, index: int, slot: str) -> str:
        if slot in self._uids and self._uids[slot][index]:
            return f"uid:{self._uids[slot][index]}"
        return f"{self.name}:{index}/{slot}"

    def raw(self, index: int, slot: str) -> bytes:
        value = self._columns[slot][index][slot]
        if isinstance(value, dict):  # Image(decode=False): {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path"):
                return Path(value["path"]).read_bytes()
            return b""
        return value

    def media(self, index: int, slot: str) -> torch.Tensor:
        return decode_image(self.raw(index, slot), f"{self.name} row {index} {slot}")


# ------------------------------------------------------------------------------------------- dataset
@dataclass
class PreferenceDataset:
    """Random access to the examples of one kind; media are decoded by :meth:`row` only.

    ``dropped`` counts the source rows left out when the source was opened (``"tie"``, ...).
    """

    kind: str
    source: str
    format: str
    reader: Any
    records: list[int]
    slots: list[tuple[str, ...]]
    labels: list[float | None]
    split_rows: bool = False
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def prompt(self, index: int) -> str:
        return self.reader.prompt(self.records[index])

    def label(self, index: int) -> float | None:
        return self.labels[index]

    def row_id(self, index: int) -> str:
        record = self.records[index]
        if self.split_rows:
            return f"{self.reader.name}:{record}/{self.slots[index][0]}"
        return f"{self.reader.name}:{record}"

    def media_paths(self, index: int) -> tuple[Path | None, ...]:
        """The file of each media of the row (``None`` for media stored inside the dataset)."""
        return tuple(self.reader.path(self.records[index], slot) for slot in self.slots[index])

    def media_keys(self, index: int) -> tuple[str, ...]:
        """A stable identity of each media (resolved path, image uid, or row and column)."""
        return tuple(self.reader.media_key(self.records[index], slot) for slot in self.slots[index])

    def media(self, index: int, position: int = 0) -> torch.Tensor:
        """Decode media ``position`` of row ``index`` only (pairs: 0 preferred, 1 rejected)."""
        return self.reader.media(self.records[index], self.slots[index][position])

    def row(self, index: int) -> PreferenceExample:
        """Decode row ``index``; raises MediaError (naming the file or row) when a media cannot be read."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for a dataset of {len(self)} rows")
        record = self.records[index]
        media = tuple(self.reader.media(record, slot) for slot in self.slots[index])
        if len(media) == 2 and media[0].ndim != media[1].ndim:
            raise MediaError(f"{self.row_id(index)}: preferred and rejected are not both images or both videos")
        return PreferenceExample(self.reader.prompt(record), media, self.labels[index], self.row_id(index))


# ------------------------------------------------------------------------------------------- opening
def open_preferences(config: DataConfig, kind: str = "") -> PreferenceDataset:
    """Open ``config.source`` as examples of ``config.kind`` (or ``kind``, the algorithm's, when that is empty)."""
    config.validate()
    kind = config.kind or kind
    if not kind:
        raise PreferenceDataError(f"no preference kind: set data.kind to one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise PreferenceDataError(f"unknown preference kind {kind!r}; kinds: {', '.join(KINDS)}")
    if not config.source:
        raise PreferenceDataError("data.source is empty: give a Hugging Face dataset id or folder, parquet files, "
                                  "a Diffusion-KTO CSV or a JSONL/CSV manifest")
    reader, native, format_name, records, slots, labels, dropped = _open_native(config)
    if kind not in DERIVED_KINDS[native]:
        raise PreferenceDataError(
            f"{config.source}: a {native} source cannot give {kind} examples (it gives {', '.join(DERIVED_KINDS[native])})"
        )
    split_rows = False
    if kind == native:
        pass
    elif native == "pairs" and kind == "labels":
        records = [r for r in records for _ in range(2)]
        slots = [(s,) for pair in slots for s in pair]
        labels = [v for _ in range(len(labels)) for v in (1.0, 0.0)]
        split_rows = True
    elif native == "pairs":  # winners / experts: the preferred image
        slots = [pair[:1] for pair in slots]
        labels = [None] * len(records)
    elif native == "labels":  # winners / experts: the desirable rows
        keep = [i for i, value in enumerate(labels) if value == 1.0]
        records, slots = [records[i] for i in keep], [slots[i] for i in keep]
        labels = [None] * len(keep)
    if not records:
        raise PreferenceDataError(f"{config.source}: no {kind} examples (dropped: {dropped or 'none'})")
    return PreferenceDataset(kind, str(config.source), format_name, reader, records, slots, labels, split_rows, dropped)


def _open_native(config: DataConfig):
    source = str(config.source)
    path = Path(source)
    if path.is_dir() and _is_saved_dataset(path):
        return _pickapic(_load_from_disk(path, config.split), path.name, config)
    if path.is_dir() or any(ch in source for ch in "*?[") or path.suffix == ".parquet":
        files = _parquet_files(source, config.split)
        if files:
            return _pickapic(_load_parquet(files), Path(files[0]).stem if len(files) == 1 else path.name, config)
        tables = sorted(p for p in path.glob("*") if p.suffix in TABLE_SUFFIXES) if path.is_dir() else []
        if len(tables) == 1:
            return _open_table(tables[0], config)
        raise PreferenceDataError(
            f"{source}: no dataset here (expected a save_to_disk folder, parquet files, or one JSONL/CSV manifest)"
        )
    if path.suffix.lower() in TABLE_SUFFIXES:
        if not path.is_file():
            raise PreferenceDataError(f"{source}: no such file")
        return _open_table(path, config)
    if path.exists() or source.startswith((".", "/", "~")) or path.suffix:
        raise PreferenceDataError(f"{source}: no such dataset file or folder (expected .parquet, .jsonl, .csv or a folder)")
    return _pickapic(_load_hub(source, config.split), source.replace("/", "_"), config)


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _datasets():
    try:
        import datasets
    except ModuleNotFoundError as err:
        raise PreferenceDataError("Hugging Face sources need the `datasets` package: pip install 'diffalign[data]'") from err
    return datasets


def _load_from_disk(folder: Path, split: str):
    datasets = _datasets()
    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise PreferenceDataError(f"{folder}: no split {split!r} (splits: {', '.join(loaded)}); set data.split")
        loaded = loaded[split]
    return loaded


def _parquet_files(source: str, split: str) -> list[str]:
    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    elif any(ch in source for ch in "*?["):
        files = sorted(f for f in glob.glob(source, recursive=True) if f.endswith(".parquet"))
    elif path.is_file():
        return [str(path)]
    else:
        raise PreferenceDataError(f"{source}: no such file")
    in_split = [f for f in files if split in Path(f).name or split in Path(f).parent.parts]
    return in_split or files


def _load_parquet(files: list[str]):
    datasets = _datasets()
    return datasets.load_dataset("parquet", data_files=files, split="train")


def _load_hub(hub_id: str, split: str):
    datasets = _datasets()
    try:
        return datasets.load_dataset(hub_id, split=split)
    except Exception as err:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE or getattr(datasets.config, "HF_HUB_OFFLINE", False):
            raise PreferenceDataError(
                f"{hub_id}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE); download it "
                "once online, or set data.source to a local folder (datasets' save_to_disk) or to parquet files"
            ) from err
        raise PreferenceDataError(f"{hub_id}: cannot load the Hugging Face dataset ({type(err).__name__}: {err})") from err


def _check_format(config: DataConfig, found: str, columns: Sequence[str]) -> None:
    if config.format not in ("auto", found):
        raise PreferenceDataError(f"{config.source}: data.format = {config.format!r} but the columns {sorted(columns)} are {found}'s")


def _limit(count: int, config: DataConfig) -> int:
    return count if config.max_examples is None else min(count, config.max_examples)


def _pickapic(dataset, name: str, config: DataConfig):
    columns = list(dataset.column_names)
    missing = [c for c in PICKAPIC_COLUMNS if c not in columns]
    if missing:
        raise PreferenceDataError(
            f"{config.source}: not in the Pick-a-Pic v2 schema (missing columns {', '.join(missing)}; has {', '.join(columns)})"
        )
    _check_format(config, "pickapic", columns)
    count = _limit(len(dataset), config)
    if count < len(dataset):
        dataset = dataset.select(range(count))
    reader = _ArrowReader(dataset, name, ("jpg_0", "jpg_1"))
    records, slots, labels, dropped = [], [], [], {}
    for index, value in enumerate(dataset["label_0"]):
        value = float("nan") if value is None else float(value)
        if value == 0.5:
            dropped["tie"] = dropped.get("tie", 0) + 1
        elif value in (0.0, 1.0):
            records.append(index)
            slots.append(("jpg_0", "jpg_1") if value == 1.0 else ("jpg_1", "jpg_0"))
            labels.append(1.0)
        else:
            dropped["bad label_0"] = dropped.get("bad label_0", 0) + 1
    return reader, "pairs", "pickapic", records, slots, labels, dropped


def _read_table(path: Path) -> list[dict[str, Any]]:
    """A manifest's rows, read by the one CSV / JSONL reader of :mod:`diffalign.errors`."""
    try:
        return read_csv(path, "manifest") if path.suffix.lower() == ".csv" else read_jsonl(path, "manifest")
    except UserError as err:
        raise PreferenceDataError(str(err)) from None


def _open_table(path: Path, config: DataConfig):
    rows = _read_table(path)
    if not rows:
        raise PreferenceDataError(f"{path}: the table has no rows")
    columns = set(rows[0])
    if set(KTO_COLUMNS) <= columns:
        _check_format(config, "kto_csv", columns)
        return _kto_csv(path, rows[: _limit(len(rows), config)])
    for native, needed in MANIFEST_COLUMNS.items():
        if set(needed) <= columns:
            _check_format(config, "manifest", columns)
            return _manifest(path, rows[: _limit(len(rows), config)], native)
    raise PreferenceDataError(
        f"{path}: unknown columns {sorted(columns)}; expected a manifest (prompt, preferred, rejected[, soft_label] | "
        "prompt, media, desirable | prompt, media) or a Diffusion-KTO CSV (file_path, caption, label)"
    )


def _line(path: Path, index: int) -> str:
    """``file:line`` of data row ``index`` (CSV: the header is line 1)."""
    return f"{path}:{index + 2}" if path.suffix.lower() == ".csv" else f"{path} row {index + 1}"


def _check_prompt(path: Path, index: int, value: Any) -> None:
    if value is None or not str(value).strip():
        raise PreferenceDataError(f"{_line(path, index)}: empty prompt")


def _kto_csv(path: Path, rows: list[dict[str, Any]]):
    labels = []
    for index, row in enumerate(rows):
        _check_prompt(path, index, row["caption"])
        label = str(row["label"]).strip()
        if label not in KTO_LABELS:
            raise PreferenceDataError(f"{_line(path, index)}: label {label!r} is not one of {', '.join(KTO_LABELS)}")
        labels.append(KTO_LABELS[label])
    reader = _TableReader(rows, path.parent, path.name, "caption")
    return reader, "labels", "kto_csv", list(range(len(rows))), [("file_path",)] * len(rows), labels, {}


_TRUE = {"1", "true", "yes", "1.0"}
_FALSE = {"0", "false", "no", "0.0"}


def _manifest(path: Path, rows: list[dict[str, Any]], native: str):
    labels: list[float | None] = []
    for index, row in enumerate(rows):
        _check_prompt(path, index, row["prompt"])
        if native == "pairs":
            raw = row.get("soft_label")
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                labels.append(1.0)
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise PreferenceDataError(f"{_line(path, index)}: soft_label {raw!r} is not a number") from None
            if not (math.isfinite(value) and 0.5 <= value <= 1.0):
                raise PreferenceDataError(f"{_line(path, index)}: soft_label must be in [0.5, 1] (P(preferred is better)), got {raw!r}")
            labels.append(value)
        elif native == "labels":
            raw = row["desirable"]
            text = str(raw).strip().lower()
            if isinstance(raw, bool) or text in _TRUE | _FALSE:
                labels.append(1.0 if (raw is True or text in _TRUE) else 0.0)
            else:
                raise PreferenceDataError(f"{_line(path, index)}: desirable must be true/false or 1/0, got {raw!r}")
        else:
            labels.append(None)
    slots = {"pairs": ("preferred", "rejected"), "labels": ("media",), "winners": ("media",)}[native]
    reader = _TableReader(rows, path.parent, path.name, "prompt")
    return reader, native, "manifest", list(range(len(rows))), [slots] * len(rows), labels, {}
