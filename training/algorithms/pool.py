"""A pool of past trainable weights kept as named adapter snapshots (SePPO's reference checkpoints).

The pool starts with the weights at setup (``pool/0``, the initial model) and keeps a new snapshot every
``every`` optimizer updates, at most ``size`` of them (the oldest is dropped first); :meth:`draw` picks one
uniformly from those kept (SePPO's best setting, ``ref ~ U[0, k-1]``). With LoRA a snapshot is a copy of the
adapter only. The snapshots themselves travel in every checkpoint with the adapter's others; the pool's
bookkeeping (which names, in which order, the next index) is :meth:`state_dict`.
"""
from __future__ import annotations

from typing import Any

import torch

from diffalign.config import ConfigError

__all__ = ["CheckpointPool"]


class CheckpointPool:
    def __init__(self, adapter, *, every: int, size: int, prefix: str = "pool"):
        if every <= 0:
            raise ConfigError(f"the checkpoint pool's save interval must be positive, got {every}")
        if size <= 0:
            raise ConfigError(f"the checkpoint pool's size must be positive, got {size}")
        self.adapter = adapter
        self.every = every
        self.size = size
        self.prefix = prefix
        #: snapshot names kept, oldest first
        self.names: list[str] = []
        self.next_index = 0
        #: the drawn snapshot, in use until the next draw: dropping it is deferred until then
        self.held: str | None = None

    def add(self) -> str:
        """Keep the current trainable weights as ``{prefix}/{n}``; drops the oldest beyond ``size``."""
        name = f"{self.prefix}/{self.next_index}"
        self.adapter.save_snapshot(name)
        self.names.append(name)
        self.next_index += 1
        while len(self.names) > self.size:
            self._drop(self.names.pop(0))
        return name

    def _drop(self, name: str) -> None:
        if name != self.held:
            self.adapter.drop_snapshot(name)

    def start(self) -> None:
        """Keep the initial weights (once; a resumed run restores its pool instead)."""
        if not self.names:
            self.add()

    def after_update(self, global_step: int) -> None:
        if global_step % self.every == 0:
            self.add()

    def draw(self, generator: torch.Generator) -> str:
        """One kept snapshot, uniformly; it stays loaded until the next draw even if the pool moves past it."""
        if not self.names:
            raise RuntimeError("the checkpoint pool is empty: call start() first")
        previous, self.held = self.held, self.names[int(torch.randint(len(self.names), (1,), generator=generator))]
        if previous is not None and previous not in self.names and previous != self.held:
            self.adapter.drop_snapshot(previous)
        return self.held

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "next_index": self.next_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [n for n in state["names"] if n not in self.adapter.snapshot_names]
        if missing:
            raise ConfigError(f"checkpoint pool snapshots {missing} are not in the checkpoint's snapshots")
        for name in self.adapter.snapshot_names:  # the initial snapshot taken at setup, if it was dropped since
            if name.startswith(self.prefix + "/") and name not in state["names"]:
                self.adapter.drop_snapshot(name)
        self.names = list(state["names"])
        self.next_index = int(state["next_index"])
        self.held = None
