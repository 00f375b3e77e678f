"""Prompt sources and the distributed group sampler.

A *prompt source* draws ``n`` prompts for a seed: a fixed list (inline, a ``.txt`` file with one
prompt a line, or a ``.jsonl`` file with a ``"prompt"`` field), a built-in set (``animals``), or
ShapesWorld's caption grammar (``shapes``). Sources are stateless given ``(seed, counter)``, so the
sampler's whole state is one counter and resume is exact.

:class:`GroupPromptSampler` is the Flow-GRPO/AWM "K-repeat" sampler: every rank draws the same
global batch (a seeded draw shared by all ranks), ``world·batch/group_size`` distinct prompts each
repeated ``group_size`` times and shuffled, and keeps its own slice. Groups therefore span ranks,
and rewards are gathered before advantages are computed.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Callable, Sequence

from diffalign.errors import MissingPathError, UnknownNameError, UserError, read_jsonl, read_text
from diffalign.registry import Registry

__all__ = ["GroupPromptSampler", "PROMPT_SOURCES", "PromptSource", "derive_seed", "prompt_source"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any hashable description (``derive_seed(seed, "noise", epoch, index)``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class PromptSource:
    """Draws prompts: ``draw(n, seed) -> list[str]``."""

    name = "prompts"

    def draw(self, n: int, seed: int) -> list[str]:
        raise NotImplementedError


class ListSource(PromptSource):
    """A fixed pool: a seeded sample without replacement (with replacement when ``n`` exceeds the pool)."""

    def __init__(self, prompts: Sequence[str], name: str = "list"):
        prompts = [p for p in prompts if isinstance(p, str) and p.strip()]
        if not prompts:
            raise UserError(f"prompt source {name!r} is empty")
        self.prompts = list(prompts)
        self.name = name

    def draw(self, n: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        if n <= len(self.prompts):
            return rng.sample(self.prompts, n)
        return [rng.choice(self.prompts) for _ in range(n)]

    def first(self, n: int) -> list[str]:
        """The first ``n`` prompts in order (held-out lists are evaluated as given)."""
        return self.prompts[:n]


class CallableSource(PromptSource):
    def __init__(self, fn: Callable[[int, int], list[str]], name: str):
        self.fn = fn
        self.name = name

    def draw(self, n: int, seed: int) -> list[str]:
        prompts = list(self.fn(n, seed))
        if len(prompts) != n:
            raise ValueError(f"prompt source {self.name!r} returned {len(prompts)} prompts, expected {n}")
        return prompts


#: named prompt sources: name -> factory(**options) -> PromptSource
PROMPT_SOURCES: Registry[PromptSource] = Registry("prompt source", entry_point_group="diffalign.prompts")

_ANIMALS = (
    "cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer", "cow", "goat",
    "lion", "tiger", "bear", "raccoon", "fox", "wolf", "lizard", "beetle", "ant", "butterfly", "fish",
    "shark", "whale", "dolphin", "squirrel", "mouse", "rat", "snake", "turtle", "frog", "chicken", "duck",
    "goose", "bee", "pig", "turkey", "fly", "llama", "camel", "bat", "gorilla", "hedgehog", "kangaroo",
)


@PROMPT_SOURCES.register("animals")
def _animals(**options) -> PromptSource:
    return ListSource(_ANIMALS, name="animals")


@PROMPT_SOURCES.register("shapes")
def _shapes(tasks: Sequence[str] | None = None, **options) -> PromptSource:
    try:
        from diffalign.shapes.world import sample_prompts
    except ModuleNotFoundError as err:
        raise ValueError("prompt source 'shapes' needs diffalign.shapes (ShapesWorld), which is not installed") from err

    def draw(n: int, seed: int) -> list[str]:
        rows = sample_prompts(n, seed=seed, tasks=tasks, **options) if tasks else sample_prompts(n, seed=seed, **options)
        return [row["prompt"] if isinstance(row, dict) else str(row) for row in rows]

    return CallableSource(draw, name="shapes")


@PROMPT_SOURCES.register("shapes_video")
def _shapes_video(tasks: Sequence[str] | None = None, exclude_eval: bool = True, **options) -> PromptSource:
    """Captions of ShapesWorld in motion; ``exclude_eval``: never a VideoShapesEval prompt (held out, as GenEval's
    prompts are from Flow-GRPO's training), so the ``moving`` task, whose 12 captions are all in the suite, is
    only trained through ``colored_motion``."""
    from diffalign.shapes.motion import MOTION_TASKS, sample_motion_prompts

    exclude: list[str] = []
    if exclude_eval:
        from diffalign.eval.benchmark import load_prompt_suite
        from diffalign.eval.video_shapes_eval import suite_path

        exclude = [item.prompt for item in load_prompt_suite(suite_path())]

    def draw(n: int, seed: int) -> list[str]:
        return sample_motion_prompts(n, seed=seed, tasks=tuple(tasks or MOTION_TASKS), exclude=exclude)

    return CallableSource(draw, name="shapes_video")


def _read_file(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        prompts = []
        for number, row in enumerate(read_jsonl(path, "prompt file"), 1):
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise UserError(f"{path}: row {number} has no 'prompt' text (a JSONL prompt file needs one per row)")
            prompts.append(row["prompt"])
        return prompts
    return [line.strip() for line in read_text(path, "prompt file").splitlines() if line.strip()]


def prompt_source(spec: str = "", items: Sequence[str] = (), options: dict[str, Any] | None = None) -> PromptSource:
    """Resolve a source: an inline list wins, then a file path, then a registered name."""
    if items:
        return ListSource(items, name="list")
    if not spec:
        raise UserError("no prompts: give a named source, a prompt file or an inline list")
    path = Path(spec)
    if path.suffix in (".txt", ".jsonl") or path.exists():
        if not path.exists():
            raise MissingPathError(f"prompt file {path} does not exist")
        return ListSource(_read_file(path), name=str(path))
    if spec not in PROMPT_SOURCES:
        raise UnknownNameError(f"unknown prompt source {spec!r}; known: {', '.join(PROMPT_SOURCES.names())} (or a .txt/.jsonl path)")
    return PROMPT_SOURCES.build(spec, **(options or {}))


def check_group_size(batch_size: int, group_size: int, num_processes: int = 1) -> None:
    """``sampling.group_size`` must divide the global sample batch (each group's samples are drawn together);
    :class:`~diffalign.config.ConfigError` naming both otherwise."""
    from diffalign.config import ConfigError

    total = batch_size * num_processes
    if total % group_size:
        raise ConfigError(f"sampling.group_size = {group_size} must divide the global sample batch "
                          f"(sampling.batch_size {batch_size} x {num_processes} process(es) = {total})")


class GroupPromptSampler:
    """Per-batch prompts for this rank; every rank computes the same global batch from ``(seed, counter)``."""

    def __init__(
        self, source: PromptSource, batch_size: int, group_size: int = 1, num_processes: int = 1,
        process_index: int = 0, seed: int = 0,
    ):
        check_group_size(batch_size, group_size, num_processes)
        self.source = source
        self.batch_size = batch_size
        self.group_size = group_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.counter = 0

    def global_batch(self) -> list[str]:
        """The batch of all ranks for the current counter (does not advance)."""
        total = self.batch_size * self.num_processes
        distinct = self.source.draw(total // self.group_size, derive_seed(self.seed, "prompts", self.counter))
        repeated = [p for p in distinct for _ in range(self.group_size)]
        random.Random(derive_seed(self.seed, "shuffle", self.counter)).shuffle(repeated)
        return repeated

    def next_batch(self) -> list[str]:
        prompts = self.global_batch()
        self.counter += 1
        start = self.process_index * self.batch_size
        return prompts[start : start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"counter": self.counter, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.counter = int(state["counter"])
