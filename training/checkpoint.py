"""Resumable checkpoints: written atomically, the last N kept.

A checkpoint is a folder ``checkpoints/epoch_000010/`` holding

* ``weights.safetensors`` — the trainable parameters by name (LoRA or full), float32;
* ``optimizer.pt``, ``scheduler.pt``, ``ema.pt``, ``algorithm.pt`` — state dicts (tensors and plain
  values only, read back with ``torch.load(..., weights_only=True)``);
* ``rng_rank{r}.pt`` — every process's python / numpy / torch (and CUDA) RNG states;
* ``trainer_state.json`` — epoch, optimizer step, data position, advantage trackers; written last.

The folder is assembled under a temporary name and renamed into place, so an interrupted save
never leaves a half-written checkpoint where resume would look.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffalign.errors import UserError, read_json

__all__ = [
    "CheckpointError",
    "read_trainer_state",
    "capture_rng_state",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_state",
    "restore_rng_state",
    "write_checkpoint",
]

_NAME = re.compile(r"^epoch_(\d{6,})$")
STATE_FILE = "trainer_state.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed from (incomplete or unreadable); one line, as any bad input."""


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder (or of a ``checkpoints`` folder given directly)."""
    run_dir = Path(run_dir)
    if (run_dir / STATE_FILE).exists():
        return run_dir
    candidates = list_checkpoints(run_dir / "checkpoints") or list_checkpoints(run_dir)
    return candidates[-1] if candidates else None


# ------------------------------------------------------------------------------------------ RNG
def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, value in state.get("generators", {}).items():
        if generators and name in generators:
            generators[name].set_state(value)


# ---------------------------------------------------------------------------------------- writing
def write_checkpoint(
    checkpoints_dir: str | Path,
    epoch: int,
    *,
    weights: dict[str, torch.Tensor],
    states: dict[str, Any],
    trainer_state: dict[str, Any],
    rng_state: dict[str, Any] | None = None,
    keep_last: int = 3,
    accelerator=None,
) -> Path:
    """Write checkpoint ``epoch`` atomically and prune to the ``keep_last`` newest.

    Under several processes every rank calls this: rank 0 writes the shared files, each rank its
    own RNG file, and rank 0 renames the finished folder into place.
    """
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / f"epoch_{epoch:06d}"
    tmp = checkpoints_dir / f".tmp-epoch_{epoch:06d}"
    main = accelerator is None or accelerator.is_main_process
    rank = 0 if accelerator is None else accelerator.process_index
    if main:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.items()},
                  str(tmp / "weights.safetensors"))
        for name, value in states.items():
            if value is not None:
                torch.save(value, tmp / f"{name}.pt")
    _barrier(accelerator)
    if rng_state is not None:
        torch.save(rng_state, tmp / f"rng_rank{rank}.pt")
    _barrier(accelerator)
    if main:
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(checkpoints_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(accelerator)
    return final


def _barrier(accelerator) -> None:
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------- reading
def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json``; a file cut short or edited by hand is a one-line error naming it
    (read before any model loads by ``diffalign train --resume``)."""
    return read_json(Path(checkpoint) / STATE_FILE, "checkpoint trainer state")


def load_state(checkpoint: str | Path, rank: int = 0) -> dict[str, Any]:
    """Everything in a checkpoint folder: ``weights``, ``trainer_state``, ``rng`` and each ``*.pt`` state."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / STATE_FILE).exists():
        raise CheckpointError(f"{checkpoint} is not a complete checkpoint (no {STATE_FILE})")
    out: dict[str, Any] = {
        "trainer_state": read_trainer_state(checkpoint),
        "weights": load_file(str(checkpoint / "weights.safetensors")),
    }
    for path in checkpoint.glob("*.pt"):
        if path.name.startswith("rng_rank"):
            continue
        out[path.stem] = torch.load(path, map_location="cpu", weights_only=True)
    rng_path = checkpoint / f"rng_rank{rank}.pt"
    if not rng_path.exists():
        rng_path = checkpoint / "rng_rank0.pt"
    if rng_path.exists():
        out["rng"] = torch.load(rng_path, map_location="cpu", weights_only=True)
    return out
