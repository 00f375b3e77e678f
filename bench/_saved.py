"""Reusing a bench's saved per-algorithm result only when it was made with the same settings (each bench script
is run as ``python bench/SCRIPT.py``, which puts this folder on ``sys.path``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def reuse_saved(saved: Path, settings: dict[str, str], algorithm: str) -> dict[str, Any] | None:
    """The result in ``saved`` if it exists and holds ``settings``; ``None`` if there is none. One made with other
    settings stops the bench with a line naming the settings that differ (it is never overwritten)."""
    if not saved.exists():
        return None
    result = json.loads(saved.read_text())
    made_with = result.get("settings") or {}
    if made_with != settings:
        changed = sorted(k for k in settings if made_with.get(k) != settings[k])
        raise SystemExit(f"{saved} was made with other settings ({', '.join(changed)}): "
                         f"give another --out, or delete it to rerun {algorithm}")
    print(f"[{algorithm}] reusing {saved}", flush=True)
    return result
