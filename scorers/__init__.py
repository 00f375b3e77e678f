"""Reward and critic plugins: ``scorer(media, prompts) -> Tensor[B]``.

>>> from diffalign import scorers
>>> reward = scorers.load("pickscore:0.7,aesthetic:0.3", device="cuda")   # doctest: +SKIP
>>> reward(images, prompts)                                                 # doctest: +SKIP

Built-in names: ``clip``, ``pickscore``, ``aesthetic``, ``aesthetic_v1``, ``hps``, ``imagereward``,
``jpeg_compressibility``, ``jpeg_incompressibility``, ``shapes``, ``shapes_video``, ``shapes_reward`` (and the MLLM ``critic`` where
present). Other packages add scorers through the ``diffalign.scorers`` entry-point group.
"""
from __future__ import annotations

import importlib

from diffalign.scorers.base import (
    SCORERS,
    Scorer,
    WeightedSum,
    list_scorers,
    load,
    parse_spec,
    register_scorer,
)

#: modules whose import registers built-in scorers; model libraries are imported only when built.
BUILTIN_MODULES = ("clip", "pickscore", "aesthetic", "hps", "imagereward", "jpeg", "shapes", "shapes_reward", "critic")
_imported = False


def _import_builtins() -> None:
    """Import the built-in scorer modules once; a module not present in this checkout is skipped."""
    global _imported
    if _imported:
        return
    _imported = True
    for module in BUILTIN_MODULES:
        qualified = f"{__name__}.{module}"
        try:
            importlib.import_module(qualified)
        except ModuleNotFoundError as err:
            if err.name != qualified:
                raise


_import_builtins()

__all__ = ["SCORERS", "Scorer", "WeightedSum", "list_scorers", "load", "parse_spec", "register_scorer"]
