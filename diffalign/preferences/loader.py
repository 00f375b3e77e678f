"""The seeded, distributed, resumable sampler of preference batches.

Draws form one global stream, the same on every rank: draw position ``k`` (0, 1, 2, ...) takes the
row at ``k mod N`` of the permutation of pass ``k // N`` (``N`` rows; the permutation is seeded by
``(seed, pass)``, so every pass reshuffles). Batch ``b`` holds the draws ``[b·G, (b+1)·G)`` with
``G = examples_per_epoch × num_processes``, and rank ``r`` takes the slice
``[b·G + r·E, b·G + (r+1)·E)`` (``E = examples_per_epoch``): the ranks' batches are disjoint and,
**concatenated in rank order**, equal one process's batch of ``G`` examples.

* **Class balance** (labels kind, ``positive_ratio = ρ``): draw ``k`` is desirable when
  ``u_k < ρ`` with ``u_k`` uniform, seeded by ``(seed, k)``; desirable and undesirable rows then come
  from two streams like the one above, each with its own passes.
* **Prompt dropout** (``prompt_dropout = q``): draw ``k``'s prompt becomes ``""`` when ``v_k < q``,
  ``v_k`` seeded by ``(seed, k)``.
* **Undecodable rows** are recorded in :attr:`PreferenceLoader.skipped` (``{"row_id", "reason"}``, once
  per row, logged once) and replaced by the next row of the same pass's permutation (a function of the
  draw position only, so ranks and resumes agree). More than half of a batch failing is an error.
* **Decoding** happens in the caller's thread, or in ``num_workers`` threads that decode a batch's rows ahead
  (the same batches either way).
* **Latents**: with ``encode`` the batch carries ``latents = encode(media)``; with ``cache_latents`` they
  are kept per row (encoded once) and the batch carries latents only (``media = None``).

The position is the loader's whole state (:meth:`state_dict`), so a loader restored mid-dataset produces
exactly the batches the uninterrupted one would. Every batch is on CPU; ``extras["draw_position"]``
holds each example's global draw position (a per-example seed that is the same on any number of ranks).
"""
from __future__ import annotations

import logging
import random
from typing import Any, Callable

import torch
import torch.nn.functional as F

from diffalign.media import MediaError

from .batch import PreferenceBatch
from .config import DataConfig
from .sources import PreferenceDataError, PreferenceDataset

logger = logging.getLogger(__name__)

__all__ = ["PreferenceLoader", "resize_media"]


def derive_seed(*parts: Any) -> int:
    """The package's one seed derivation (:func:`diffalign.training.prompts.derive_seed`), imported on use
    so that the training package may import this module."""
    from diffalign.training.prompts import derive_seed as derive

    return derive(*parts)


def resize_media(media: torch.Tensor, size: int) -> torch.Tensor:
    """``C×H×W`` or ``T×C×H×W`` -> square ``size×size``: shorter side resized to ``size`` (bilinear,
    antialiased), then centre-cropped."""
    frames = media if media.ndim == 4 else media[None]
    height, width = frames.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        if (new_h, new_w) != (height, width):
            frames = F.interpolate(frames.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        frames = frames[..., top : top + size, left : left + size].clamp(0, 1)
    return frames if media.ndim == 4 else frames[0]


class _Stream:
    """Seeded passes over a list of dataset rows: position ``j`` -> row ``rows[perm_{j // n}[j mod n]]``."""

    def __init__(self, rows: list[int], seed: int, name: str):
        self.rows = rows
        self.seed = seed
        self.name = name
        self._pass: int | None = None
        self._perm: list[int] = []

    def _permutation(self, pass_index: int) -> list[int]:
        if self._pass != pass_index:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "pass", self.name, pass_index))
            self._perm = torch.randperm(len(self.rows), generator=generator).tolist()
            self._pass = pass_index
        return self._perm

    def row(self, position: int, attempt: int = 0) -> int:
        """The row drawn at ``position``; ``attempt > 0``: the ``attempt``-th next row of that pass."""
        count = len(self.rows)
        pass_index, offset = divmod(position, count)
        return self.rows[self._permutation(pass_index)[(offset + attempt) % count]]


class PreferenceLoader:
    """Batches of :class:`PreferenceBatch` from a :class:`PreferenceDataset`; see the module docstring."""

    def __init__(
        self,
        dataset: PreferenceDataset,
        config: DataConfig,
        *,
        seed: int,
        num_processes: int = 1,
        process_index: int = 0,
        encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_workers: int = 0,
    ):
        config.validate()
        if num_processes < 1 or not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} out of range for {num_processes} processes")
        if len(dataset) == 0:
            raise PreferenceDataError(f"{dataset.source}: the dataset is empty")
        if config.cache_latents and encode is None:
            raise ValueError("data.cache_latents needs an encode function (media -> latents)")
        self.dataset = dataset
        self.config = config
        self.seed = int(seed)
        self.num_processes = num_processes
        self.process_index = process_index
        self.encode = encode
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers  # decoding threads (0: decode in the caller's thread)
        self._pool = None
        self.batch_size = config.examples_per_epoch
        self.position = 0  # global draw position of the next batch
        self.skipped: list[dict[str, str]] = []
        self._bad: dict[int, str] = {}
        self._cache: dict[int, torch.Tensor] = {}
        self.encoded_rows = 0  # rows encoded so far (cache misses)
        self._balanced = config.positive_ratio is not None
        if self._balanced:
            if dataset.kind != "labels":
                raise PreferenceDataError(f"data.positive_ratio applies to labels examples, not {dataset.kind}")
            positives = [i for i in range(len(dataset)) if dataset.label(i) == 1.0]
            negatives = [i for i in range(len(dataset)) if dataset.label(i) != 1.0]
            if not positives or not negatives:
                raise PreferenceDataError(
                    f"{dataset.source}: data.positive_ratio needs desirable and undesirable rows; "
                    f"found {len(positives)} desirable, {len(negatives)} undesirable"
                )
            self._streams = {1: _Stream(positives, self.seed, "desirable"), 0: _Stream(negatives, self.seed, "undesirable")}
            self._class_counts = [0, 0]  # draws from each class stream before ``position``
        else:
            self._streams = {None: _Stream(list(range(len(dataset))), self.seed, "all")}

    # ---------------------------------------------------------------------------------- drawing
    def _uniform(self, what: str, position: int) -> float:
        return random.Random(derive_seed(self.seed, what, position)).random()

    def _plan(self, start: int, count: int) -> list[tuple[int, Any, int]]:
        """(draw position, stream key, position in that stream) of the global draws ``[start, start+count)``."""
        if not self._balanced:
            return [(k, None, k) for k in range(start, start + count)]
        counts = list(self._class_counts)
        plan = []
        for k in range(start, start + count):
            positive = int(self._uniform("class", k) < self.config.positive_ratio)
            plan.append((k, positive, counts[positive]))
            counts[positive] += 1
        return plan

    def _fail(self, row: int, reason: str) -> None:
        self._bad[row] = reason
        row_id = self.dataset.row_id(row)
        if row_id not in {s["row_id"] for s in self.skipped}:
            self.skipped.append({"row_id": row_id, "reason": reason})
            logger.warning("skipping preference row %s: %s", row_id, reason)

    def _media(self, row: int) -> tuple[torch.Tensor, ...]:
        example = self.dataset.row(row)
        media = example.media
        if self.config.resolution:
            media = tuple(resize_media(m, self.config.resolution) for m in media)
        return media

    def next_batch(self) -> PreferenceBatch:
        """This process's next ``examples_per_epoch`` examples (CPU tensors)."""
        size = self.batch_size
        global_size = size * self.num_processes
        plan = self._plan(self.position, global_size)
        mine = plan[self.process_index * size : (self.process_index + 1) * size]
        cached = self.config.cache_latents
        rows: list[int] = []
        media: list[tuple[torch.Tensor, ...] | None] = []
        failures = 0
        prefetched = self._prefetch(mine)
        for draw, key, stream_position in mine:
            stream = self._streams[key]
            attempt = 0
            while True:
                row = stream.row(stream_position, attempt)
                if cached and row in self._cache:
                    rows.append(row)
                    media.append(None)
                    break
                reason = self._bad.get(row)
                if reason is None:
                    try:
                        media.append(prefetched.pop(row).result() if row in prefetched else self._media(row))
                        rows.append(row)
                        break
                    except (MediaError, OSError, ValueError) as err:
                        reason = str(err)
                        self._fail(row, reason)
                failures += 1
                if failures > size / 2:
                    raise PreferenceDataError(
                        f"{self.dataset.source}: {failures} rows of a batch of {size} could not be decoded "
                        f"(e.g. {self.dataset.row_id(row)}: {reason}); check the data"
                    )
                attempt += 1
        batch = self._assemble(mine, rows, media)
        self.position += global_size
        if self._balanced:
            for _, key, _ in plan:
                self._class_counts[key] += 1
        return batch

    def _prefetch(self, plan) -> dict[int, Any]:
        """Decode the first-choice rows of ``plan`` in ``num_workers`` threads (futures by row); the batch is
        the same as with serial decoding."""
        if not self.num_workers:
            return {}
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="preference-decode")
        futures: dict[int, Any] = {}
        for _, key, stream_position in plan:
            row = self._streams[key].row(stream_position)
            if row not in futures and row not in self._bad and not (self.config.cache_latents and row in self._cache):
                futures[row] = self._pool.submit(self._media, row)
        return futures

    def _assemble(self, plan, rows: list[int], media: list[tuple[torch.Tensor, ...] | None]) -> PreferenceBatch:
        data = self.dataset
        prompts = []
        for (draw, _, _), row in zip(plan, rows):
            dropped = self.config.prompt_dropout > 0 and self._uniform("prompt_dropout", draw) < self.config.prompt_dropout
            prompts.append("" if dropped else data.prompt(row))
        if data.kind in ("pairs", "labels"):
            labels = torch.tensor([float(data.label(r)) for r in rows], dtype=torch.float32)
        else:
            labels = None
        decoded = [(row, m) for row, m in zip(rows, media) if m is not None]
        stacked = self._stack([m for _, m in decoded], data.kind) if decoded else None
        latents = None
        if self.config.cache_latents:  # media dropped: every row of the batch is known by its latents
            # one row at a time: a batched encode's bits depend on the batch it sits in, and the cache must
            # not depend on which rows happened to be decoded together (resume reproduces the run exactly)
            for position, (row, _) in enumerate(decoded):
                self._cache[row] = self._encode(stacked[position : position + 1], data.kind)[0]
            self.encoded_rows += len(decoded)
            latents, stacked = torch.stack([self._cache[r] for r in rows]), None
        elif self.encode is not None:
            latents = self._encode(stacked, data.kind)
            self.encoded_rows += len(rows)
        return PreferenceBatch(
            kind=data.kind,
            prompts=prompts,
            row_ids=[data.row_id(r) for r in rows],
            media=stacked,
            latents=latents,
            labels=labels,
            extras={"draw_position": torch.tensor([p[0] for p in plan], dtype=torch.long)},
        )

    def _stack(self, media: list[tuple[torch.Tensor, ...]], kind: str) -> torch.Tensor:
        shapes = {tuple(m.shape) for example in media for m in example}
        if len(shapes) > 1:
            raise PreferenceDataError(
                f"{self.dataset.source}: media of different sizes {sorted(shapes)} in one batch; set data.resolution"
            )
        if kind == "pairs":
            return torch.stack([torch.stack(example) for example in media])
        return torch.stack([example[0] for example in media])

    def _encode(self, media: torch.Tensor, kind: str) -> torch.Tensor:
        flat = media.flatten(0, 1) if kind == "pairs" else media
        with torch.no_grad():
            latents = self.encode(flat).detach().cpu()
        return latents.unflatten(0, (media.shape[0], 2)) if kind == "pairs" else latents

    # ---------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain python values: the draw position (and class counts); restoring it resumes exactly."""
        state: dict[str, Any] = {"position": self.position, "seed": self.seed, "skipped": [dict(s) for s in self.skipped]}
        if self._balanced:
            state["class_counts"] = list(self._class_counts)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        self.position = int(state["position"])
        if self._balanced:
            self._class_counts = [int(v) for v in state["class_counts"]]
        self.skipped = [dict(s) for s in state.get("skipped", [])]
