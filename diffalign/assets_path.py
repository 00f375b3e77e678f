"""Locate files shipped in ``assets/`` (``diffalign/assets`` in a wheel, ``assets/`` in a checkout)."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def asset_path(*parts: str) -> Path:
    """Path of a shipped asset; it may not exist (callers check)."""
    return Path(str(files("diffalign.assets"))).joinpath(*parts)


def tokenizer_path() -> Path:
    """The CLIP BPE tokenizer built from open_clip's merges (``CLIPTokenizer.from_pretrained``)."""
    return asset_path("clip_tokenizer")
