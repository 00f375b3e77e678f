"""The user-error type and one check per kind of bad input.

Every entry point (CLI command or Python function) validates its arguments with these checks
*before* anything heavy happens (model load, scorer weights, sampling), so a mistake costs a second,
not a model load. A failed check raises :class:`UserError` (a ``ValueError``) whose message names
the offending value, says why it is wrong and, where it helps, how to fix it; ``diffalign``'s
``main`` prints it as one line, ``diffalign <command>: <message>``, and exits with status 2.
Everything else is an internal error: it keeps its traceback and exits 1.

This module imports nothing heavy (no torch), so the CLI can check before it loads anything.
"""
from __future__ import annotations

import csv
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = [
    "MAX_STEPS",
    "MissingPathError",
    "OutputExistsError",
    "UnknownNameError",
    "UserError",
    "existing_path",
    "hub_cached",
    "hub_offline",
    "known_name",
    "model_source",
    "number",
    "read_csv",
    "read_json",
    "read_jsonl",
    "read_toml",
    "scorer_spec",
    "scorer_weights",
]

#: sampler steps above this are a typo (``1e99``), not a schedule
MAX_STEPS = 10_000


class UserError(ValueError):
    """Bad input from the user: a missing file, an unknown name, a number out of range, ...

    The message is one line that names the offending value; the CLI prints it and exits 2.
    """


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""

    def __str__(self) -> str:  # OSError would format (errno, strerror) tuples
        return str(self.args[0]) if self.args else ""


class OutputExistsError(UserError, FileExistsError):
    """An output that would be overwritten already exists."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownNameError(UserError, KeyError):
    """A name that is not registered (scorer, algorithm, recipe, benchmark, ...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# ------------------------------------------------------------------------------------------ paths
def existing_path(path: str | Path, what: str, *, kind: str = "any", hint: str = "") -> Path:
    """``path`` as a :class:`Path`; :class:`MissingPathError` if it does not exist (or is not a ``kind``: file, dir)."""
    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    if not path.exists():
        raise MissingPathError(f"{what} {path} does not exist{suffix}")
    if kind == "file" and not path.is_file():
        raise UserError(f"{what} {path} is a folder, not a file{suffix}")
    if kind == "dir" and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder{suffix}")
    return path


# ---------------------------------------------------------------------------------------- numbers
def number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    low_open: bool = False,
) -> Any:
    """``value`` if it is a finite number with ``low <= value <= high`` (``low < value`` if ``low_open``).

    Out-of-range values are refused, never clamped: ``number(0, "--steps", low=1)`` raises
    ``UserError("--steps must be an integer >= 1, got 0")``.
    """
    kind = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    wanted = f"{kind}{' ' + ' and '.join(bounds) if bounds else ''}"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise UserError(f"{name} must be {wanted}, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        raise UserError(f"{name} must be {wanted}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------ names
def known_name(name: str, known: Iterable[str], what: str, *, hint: str = "") -> str:
    """``name`` if it is in ``known``; :class:`UnknownNameError` listing the known names otherwise."""
    known = sorted(known)
    if name not in known:
        suffix = f" ({hint})" if hint else ""
        raise UnknownNameError(f"unknown {what} {name!r}; known: {', '.join(known) or 'none'}{suffix}")
    return name


def scorer_spec(spec: str, options: Mapping[str, Any] | None = None, *, what: str = "scorer") -> list[tuple[str, float]]:
    """Parse a scorer spec (``"pickscore:0.7,aesthetic:0.3"``), check every name is registered, every
    weight finite and every part's weights are there (:func:`scorer_weights`); the ``(name, weight)`` pairs.
    ``options`` are :func:`diffalign.scorers.load`'s (shared ones, and a dict per part name)."""
    from diffalign.scorers import SCORERS, parse_spec

    try:
        parts = parse_spec(spec)
    except UserError:
        raise
    except ValueError as err:
        raise UserError(f"{what} {spec!r}: {err}") from None
    options = dict(options or {})
    shared = {k: v for k, v in options.items() if not isinstance(v, Mapping)}
    for name, weight in parts:
        known_name(name, SCORERS.names(), what, hint="see diffalign score --list")
        number(weight, f"weight of {name!r} in {what} {spec!r}")
        own = {**shared, **(options.get(name) if isinstance(options.get(name), Mapping) else {})}
        scorer_factory_weights(name, SCORERS.get(name), own)
    return parts


#: scorer constructor arguments that name weights (a hub id, a folder or a file)
WEIGHT_OPTIONS = ("model", "processor", "clip_model", "head", "checkpoint")


def scorer_factory_weights(name: str, factory: Any, options: Mapping[str, Any]) -> None:
    """Check the weights a scorer factory will load (its weight arguments, given or default)."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    for option in WEIGHT_OPTIONS:
        if option not in parameters:
            continue
        default = parameters[option].default
        value = options.get(option, None if default is inspect.Parameter.empty else default)
        if isinstance(value, (str, Path)) and str(value):
            scorer_weights(name, value, option=option)


# ------------------------------------------------------------------------------------------ files
def read_text(path: str | Path, what: str = "text file", *, error: type[UserError] = UserError) -> str:
    """The UTF-8 text of a file; ``error`` (a :class:`UserError`) naming it if it is missing, a folder or not UTF-8."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    if not path.is_file():
        raise error(f"{what} {path} is a folder, not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({what}): {err.reason} at byte {err.start}") from None
    except OSError as err:
        raise error(f"{what} {path} cannot be read: {err.strerror or err}") from None


def read_toml(path: str | Path, what: str = "TOML file") -> dict[str, Any]:
    """The parsed TOML file; :class:`UserError` naming the file and the position if it does not parse."""
    path = existing_path(path, what, kind="file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None


def read_json(path: str | Path, what: str = "JSON file", *, expect: type = dict) -> Any:
    """The parsed JSON file; :class:`UserError` naming the file if it does not parse or is not an ``expect``."""
    path = existing_path(path, what, kind="file")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text: {err}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({what}): {err}") from None
    if not isinstance(value, expect):
        raise UserError(f"{path}: expected a JSON {expect.__name__} ({what}), got {type(value).__name__}")
    return value


def read_jsonl(path: str | Path, what: str = "JSONL file") -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines skipped); :class:`UserError` naming ``file:line``."""
    path = existing_path(path, what, kind="file")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text: {err}") from None
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{line_number}: not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_csv(path: str | Path, what: str = "CSV file") -> list[dict[str, str]]:
    """The rows of a CSV file with a header; :class:`UserError` if it has no header or does not parse."""
    path = existing_path(path, what, kind="file")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames
    except (csv.Error, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV file: {err}") from None
    if not header:
        raise UserError(f"{path}: empty CSV file (no header row)")
    return rows


# ---------------------------------------------------------------------------------- hub sources
def hub_offline() -> bool:
    """Whether the Hugging Face Hub may not be reached (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or env


def hub_cached(repo_id: str, repo_type: str = "model") -> bool:
    """Whether a snapshot of ``repo_id`` is in the local Hugging Face cache (no network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError

    try:
        snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
    except (HFValidationError, OSError, ValueError):  # LocalEntryNotFoundError: no snapshot in the cache
        return False
    return True


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def _valid_repo_id(source: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def model_source(source: str | Path, *, option: str = "--model") -> str:
    """Check a pipeline source before it loads: a shipped model name, a diffusers folder (with
    ``model_index.json``) or a Hugging Face hub id, which must be in the local cache while the hub is
    offline. Returns the source unchanged."""
    from diffalign.assets_path import asset_path

    text = str(source)
    if (asset_path("models", text) / "model_index.json").exists():
        return text
    trainable = {"shapes-video": "python -m diffalign.shapes.pretrain_video --out runs/shapes-video-pretrain"}
    if text in trainable and not Path(text).exists():
        raise MissingPathError(
            f"{option} {text}: this model is not shipped in assets/models yet; train it with `{trainable[text]}` "
            f"and pass the folder it writes (runs/shapes-video-pretrain/{text})"
        )
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "model_index.json").exists():
            raise UserError(f"{option} {text}: not a diffusers pipeline folder (no model_index.json)")
        return text
    if _looks_local(text) or not _valid_repo_id(text):
        raise MissingPathError(
            f"{option} {text}: no such folder, and not a shipped model name (shapes-sd, shapes-flow) or a hub id"
        )
    if hub_offline() and not hub_cached(text):
        raise UserError(
            f"{option}: model {text!r} is not in the local Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE); download it (huggingface-cli download {text}) or pass a local folder as {option}"
        )
    return text


def scorer_weights(scorer: str, source: str | Path, *, option: str = "model") -> str:
    """Check a scorer's weights before they load: a local file or folder, or a hub id that is in the
    local cache while the hub is offline. Names that are not hub ids (open_clip names) pass."""
    text = str(source)
    if Path(text).expanduser().exists():
        return text
    if text.startswith((".", "/", "~")) or "\\" in text:
        raise MissingPathError(f"{scorer} weights {text} do not exist; pass an existing file or folder with {option}=")
    repo = "/".join(text.split("/")[:2])  # "org/repo" or "org/repo/path/in/repo"
    if "/" not in text or not _valid_repo_id(repo):
        return text  # a library's own model name (open_clip architectures, ...)
    if hub_offline() and not hub_cached(repo):
        raise UserError(
            f"{scorer} weights {repo!r} are not cached and the hub is offline (HF_HUB_OFFLINE); "
            f"download them (huggingface-cli download {repo}) or pass a local folder with {option}="
        )
    return text
