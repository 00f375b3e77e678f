"""Run reports: the reward curve of a training history (kept out of the training loop)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_reward_curve"]


def plot_reward_curve(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Training reward per epoch (``reward_mean``) and held-out reward per evaluation
    (``eval/reward_mean``) as a PNG; ``None`` when the history has neither."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["epoch"], h["reward_mean"]) for h in history if "reward_mean" in h]
    held = [(h["epoch"], h["eval/reward_mean"]) for h in history if "eval/reward_mean" in h]
    if not train and not held:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train reward (sampling)")
    if held:
        ax.plot(*zip(*held), marker="o", label="held-out reward (eval)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
