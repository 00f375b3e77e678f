"""Run reports: the reward curve of a training history (kept out of the training loop)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_reward_curve"]


def plot_reward_curve(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Training reward per epoch (``reward_mean``) and held-out reward per evaluation
    (``eval/reward_mean``) as a PNG; ``None`` when the history has neither.

    With a gold scorer (``eval/gold_mean``), the held-out gold score is drawn beside the proxy on its own
    axis (the two scorers' scales differ), and each reward-hacking evaluation (``eval/reward_hacking``)
    is marked by a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["epoch"], h["reward_mean"]) for h in history if "reward_mean" in h]
    held = [(h["epoch"], h["eval/reward_mean"]) for h in history if "eval/reward_mean" in h]
    gold = [(h["epoch"], h["eval/gold_mean"]) for h in history if "eval/gold_mean" in h]
    hacking = [h["epoch"] for h in history if h.get("eval/reward_hacking")]
    if not train and not held:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    lines = []
    if train:
        lines += ax.plot(*zip(*train), label="train reward (sampling)")
    if held:
        lines += ax.plot(*zip(*held), marker="o", label="held-out reward (eval, proxy)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    if gold:
        gold_ax = ax.twinx()
        lines += gold_ax.plot(*zip(*gold), marker="s", color="tab:green", label="held-out gold (eval, never optimised)")
        gold_ax.set_ylabel("gold score")
        for number, epoch in enumerate(hacking):
            line = ax.axvline(epoch, color="tab:red", linestyle="--", alpha=0.6, label="reward hacking" if number == 0 else None)
            if number == 0:
                lines.append(line)
    ax.set_title(title)
    ax.legend(lines, [line.get_label() for line in lines], loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
