"""VBench's prompt suite and its video naming (``{prompt}-{index}.mp4``, 5 videos per prompt).

The shipped ``assets/prompts/vbench/VBench_full_info.json`` is the official list (946 entries, 944
distinct prompts: two prompts serve two suites each, and their videos are shared because files are
named by prompt). :func:`load_suite` merges such entries into one :class:`VBenchPrompt`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffalign.assets_path import asset_path
from diffalign.errors import UserError, read_text

VIDEOS_PER_PROMPT = 5
VIDEO_SUFFIX = ".mp4"


class VBenchError(UserError):
    """Bad VBench input (prompt file, video folder, options); the message names the problem."""


@dataclass
class VBenchPrompt:
    """One prompt, the dimensions it is scored on and their labels (``auxiliary_info[dimension]``)."""

    prompt: str
    dimensions: list[str]
    auxiliary: dict[str, Any] = field(default_factory=dict)

    def video_name(self, index: int, suffix: str = VIDEO_SUFFIX) -> str:
        return f"{self.prompt}-{index}{suffix}"


def suite_path() -> Path:
    return asset_path("prompts", "vbench", "VBench_full_info.json")


def load_suite(path: str | Path | None = None) -> list[VBenchPrompt]:
    """Read a VBench ``full_info`` JSON (default: the shipped official one) into distinct prompts."""
    path = Path(path) if path is not None else suite_path()
    if not path.is_file():
        raise VBenchError(f"{path}: VBench prompt file not found")
    try:
        entries = json.loads(read_text(path, "VBench prompt file", error=VBenchError))
    except json.JSONDecodeError as err:
        raise VBenchError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(entries, list) or not entries:
        raise VBenchError(f"{path}: expected a non-empty JSON list of {{prompt_en, dimension}} objects")
    merged: dict[str, VBenchPrompt] = {}
    for number, entry in enumerate(entries):
        prompt = entry.get("prompt_en") if isinstance(entry, dict) else None
        dimensions = entry.get("dimension") if isinstance(entry, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise VBenchError(f"{path}: entry {number} has no prompt_en string")
        if not isinstance(dimensions, list) or not all(isinstance(d, str) for d in dimensions):
            raise VBenchError(f"{path}: entry {number} ({prompt!r}) has no 'dimension' list")
        item = merged.setdefault(prompt, VBenchPrompt(prompt, []))
        item.dimensions.extend(d for d in dimensions if d not in item.dimensions)
        item.auxiliary.update(entry.get("auxiliary_info") or {})
    return list(merged.values())


def prompts_for(suite: list[VBenchPrompt], dimensions: list[str]) -> list[VBenchPrompt]:
    """The prompts scored on at least one of ``dimensions``."""
    wanted = set(dimensions)
    return [item for item in suite if wanted & set(item.dimensions)]


def first_prompts(suite: list[VBenchPrompt], dimensions: list[str], per_dimension: int | None) -> list[VBenchPrompt]:
    """Quick runs: the first ``per_dimension`` prompts of each dimension's suite (all when None), in
    suite order."""
    if per_dimension is None:
        return prompts_for(suite, dimensions)
    keep = {id(item) for d in dimensions for item in prompts_for(suite, [d])[:per_dimension]}
    return [item for item in suite if id(item) in keep]
