"""Memory and attention options, in one place for every family.

* ``attention``: ``"sdpa"`` (PyTorch scaled-dot-product attention, the default), ``"xformers"``
  (only on CUDA with xformers importable; otherwise falls back to SDPA with a warning) or
  ``"sliced"`` (attention slicing, lowest memory, slowest).
* ``vae_slicing`` / ``vae_tiling``: decode a batch one sample at a time / in tiles.
* ``gradient_checkpointing``: recompute denoiser activations in the backward pass.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings

logger = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("sdpa", "xformers", "sliced")


def xformers_usable(device) -> bool:
    return importlib.util.find_spec("xformers") is not None and getattr(device, "type", str(device)) == "cuda"


def configure_memory(
    adapter,
    attention: str = "sdpa",
    attention_slice_size: int | str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    gradient_checkpointing: bool = False,
) -> str:
    """Apply memory options to ``adapter`` and return the attention backend actually used."""
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
    pipe = adapter.pipe
    denoiser = adapter.trainable_denoiser
    used = attention
    if attention == "xformers" and not xformers_usable(adapter.device):
        warnings.warn(
            "attention='xformers' needs CUDA and the xformers package; falling back to PyTorch SDPA",
            RuntimeWarning,
            stacklevel=2,
        )
        used = "sdpa"
    if used == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    elif used == "sliced":
        if hasattr(pipe, "enable_attention_slicing"):
            pipe.enable_attention_slicing(attention_slice_size)
        else:
            logger.warning("%s has no attention slicing; keeping SDPA", type(pipe).__name__)
            used = "sdpa"
    else:
        if hasattr(denoiser, "set_default_attn_processor"):
            try:
                from diffusers.models.attention_processor import AttnProcessor2_0

                if hasattr(denoiser, "attn_processors") and all(
                    type(p).__name__ in ("AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "SlicedAttnProcessor")
                    for p in denoiser.attn_processors.values()
                ):
                    denoiser.set_attn_processor(AttnProcessor2_0())
            except (ImportError, ValueError):  # families with their own processors keep them (they use SDPA)
                pass
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if vae_slicing and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()
        if vae_tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
    if gradient_checkpointing:
        if not getattr(denoiser, "_supports_gradient_checkpointing", False):
            raise ValueError(f"{type(denoiser).__name__} does not support gradient checkpointing")
        denoiser.enable_gradient_checkpointing()
    return used
