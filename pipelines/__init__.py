"""Pipeline adapters: one per model family, around a diffusers pipeline.

``diffalign.pipelines.load(source)`` takes a hub id, a local folder, the name of a model shipped in
``assets/`` (``"shapes-sd"``, ``"shapes-flow"``, ``"shapes-video"``) or a diffusers pipeline object, and returns the
adapter for its family.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from diffalign.errors import read_json

from .base import ADAPTERS, AdapterError, PipelineAdapter, UnsupportedPipelineError, register_adapter

_FAMILY_MODULES = ("sd", "sdxl", "sd3", "flux", "cogvideox", "wan")
for _name in _FAMILY_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _err:  # a family module not written yet
        if _err.name != f"{__name__}.{_name}":
            raise


def adapter_class_for(pipeline_class_name: str) -> type[PipelineAdapter]:
    if pipeline_class_name not in ADAPTERS:
        raise UnsupportedPipelineError(
            f"unsupported pipeline class {pipeline_class_name!r}; diffalign supports: {', '.join(ADAPTERS.names())}"
        )
    return ADAPTERS.get(pipeline_class_name)


def shipped_model_path(name: str) -> Path | None:
    """Folder of a model shipped in ``assets/models`` (e.g. ``"shapes-sd"``), or None."""
    from diffalign.assets_path import asset_path

    folder = asset_path("models", name)
    return folder if (folder / "model_index.json").exists() else None


def load(
    source: Any,
    *,
    device: torch.device | str | None = None,
    torch_dtype: torch.dtype | None = None,
    **from_pretrained_kwargs,
) -> PipelineAdapter:
    """Build the adapter for ``source`` (hub id, local folder, shipped model name or pipeline object)."""
    if isinstance(source, PipelineAdapter):
        return source
    if not isinstance(source, (str, Path)):
        return adapter_class_for(type(source).__name__)(source, device=device)
    from diffusers import DiffusionPipeline

    path = shipped_model_path(str(source)) if isinstance(source, str) else None
    location = str(path or source)
    index = Path(location) / "model_index.json"
    if index.exists():  # fail fast on an unsupported class before loading any weights
        model_index = read_json(index, "the pipeline's model index")
        cls = adapter_class_for(model_index["_class_name"])
        # components saved as null (e.g. SD3 without T5) must be passed as None to from_pretrained
        for name, value in model_index.items():
            if isinstance(value, list) and value and all(v is None for v in value):
                from_pretrained_kwargs.setdefault(name, None)
    elif Path(location).exists():
        raise AdapterError(f"{location}: not a diffusers pipeline folder (no model_index.json)")
    else:
        cls = None
    from_pretrained_kwargs.setdefault("trust_remote_code", False)
    if torch_dtype is not None:
        from_pretrained_kwargs["torch_dtype"] = torch_dtype
    if cls is None:  # a hub id: a missing or uncached one is the user's to fix, not a traceback
        from diffalign.errors import model_source

        model_source(location, option="model")
    try:
        pipe = DiffusionPipeline.from_pretrained(location, **from_pretrained_kwargs)
    except OSError as err:
        if cls is not None:
            raise
        raise AdapterError(
            f"model {location!r} could not be loaded from the Hugging Face Hub and is not in the local cache "
            f"({' '.join(str(err).split())[:200]}); download it or pass a local folder"
        ) from err
    cls = cls or adapter_class_for(type(pipe).__name__)
    adapter = cls(pipe, device=device)
    _apply_text_length(adapter, Path(location))
    return adapter


def _apply_text_length(adapter: PipelineAdapter, folder: Path) -> None:
    """A folder trained on fewer text positions than its pipeline's default (``shapes-video``: 32, not Wan's 512)
    says so in ``diffalign_defaults.json``; the adapter then encodes prompts to that length."""
    defaults = folder / "diffalign_defaults.json"
    if not defaults.is_file():
        return
    length = read_json(defaults, "the model's sampling defaults").get("max_sequence_length")
    settable = not isinstance(getattr(type(adapter), "max_sequence_length", None), property)
    if length is not None and hasattr(adapter, "max_sequence_length") and settable:
        adapter.max_sequence_length = int(length)


__all__ = [
    "ADAPTERS",
    "AdapterError",
    "PipelineAdapter",
    "UnsupportedPipelineError",
    "adapter_class_for",
    "load",
    "register_adapter",
    "shipped_model_path",
]
