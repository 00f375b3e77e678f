"""Small preference datasets of random media, written as manifests (``diffalign.preferences.sources``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from diffalign.media import save_image, save_video


def _media(generator: torch.Generator, size: int, frames: int | None) -> torch.Tensor:
    shape = (3, size, size) if frames is None else (frames, 3, size, size)
    return torch.rand(shape, generator=generator)


def _save(media: torch.Tensor, path: Path) -> str:
    (save_image if media.ndim == 3 else save_video)(media, path)
    return path.name


def write_pairs(folder: Path, size: int, count: int = 8, *, frames: int | None = None, seed: int = 0) -> Path:
    """``pairs.jsonl``: ``count`` pairs of random images (videos with ``frames``) with soft labels in [0.5, 1]."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    suffix = ".png" if frames is None else ".mp4"
    rows = []
    for i in range(count):
        rows.append({"prompt": f"a red square number {i}",
                     "preferred": _save(_media(gen, size, frames), folder / f"w{i}{suffix}"),
                     "rejected": _save(_media(gen, size, frames), folder / f"l{i}{suffix}"),
                     "soft_label": 0.5 + 0.5 * float(torch.rand((), generator=gen))})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_labels(folder: Path, size: int, count: int = 8, *, seed: int = 0) -> Path:
    """``labels.jsonl``: ``count`` random images, alternately desirable and undesirable."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    rows = [{"prompt": f"a blue circle number {i}", "media": _save(_media(gen, size, None), folder / f"m{i}.png"),
             "desirable": i % 2 == 0} for i in range(count)]
    path = folder / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_winners(folder: Path, size: int, count: int = 8, *, kind: str = "winners", frames: int | None = None,
                  seed: int = 0) -> Path:
    """``{kind}.jsonl`` (winners or experts): ``count`` random images (videos with ``frames``) with prompts."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    suffix = ".png" if frames is None else ".mp4"
    rows = [{"prompt": f"a green triangle number {i}", "media": _save(_media(gen, size, frames), folder / f"m{i}{suffix}")}
            for i in range(count)]
    path = folder / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
