"""Tiny models of every real architecture, built from configs and saved with ``save_pretrained``.

Tests load them back through the same ``from_pretrained(path)`` a user calls. Each builder takes a
folder and writes a complete diffusers pipeline folder there; the ``tiny_model`` fixture in
``tests/conftest.py`` builds each one once per test session.
"""
from __future__ import annotations

import importlib
from pathlib import Path

#: kind -> "module:function" (module relative to tests.tiny); function(path: Path) -> None
BUILDERS = {
    "sd15": "sd:build_sd15",
    "sd2": "sd:build_sd2_v",
    "sdxl": "sd:build_sdxl",
    "sd3": "flow:build_sd3",
    "flux": "flow:build_flux",
    "cogvideox": "cogvideox:build_cogvideox",
    "wan": "wan:build_wan",
}

#: sampling sizes for kinds whose pipeline default is too large for a CPU (Wan: 480×832, 81 frames)
SMALL_SAMPLE_SIZE = {"wan": {"height": 32, "width": 32, "num_frames": 5}}


def build(kind: str, path: Path) -> Path:
    if kind not in BUILDERS:
        raise KeyError(f"unknown tiny model {kind!r}; known: {sorted(BUILDERS)}")
    module_name, function = BUILDERS[kind].split(":")
    module = importlib.import_module(f"tests.tiny.{module_name}")
    path.mkdir(parents=True, exist_ok=True)
    getattr(module, function)(path)
    return path
