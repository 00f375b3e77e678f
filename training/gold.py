"""A gold metric beside the proxy reward, and the reward-hacking alarm.

A run may name a gold scorer (``eval.gold``, e.g. the ShapesWorld judge ``"shapes"``) that is never
optimised: evaluation scores the held-out samples with the proxy (``reward.spec``) and with the gold scorer,
and logs ``eval/reward_mean`` beside ``eval/gold_mean``.

Reward hacking is the proxy rising while the gold falls. Over the last ``W = eval.hacking_window``
evaluations with proxy means ``p`` and gold means ``g``::

    Δp = p[-1] - p[-W],   Δg = g[-1] - g[-W]
    hacking  <=>  Δp > τ  and  Δg < -τ          (τ = eval.hacking_tolerance >= 0)

The alarm is raised at the onset (the first evaluation where it holds after one where it did not), so a
long episode gives one warning line, and every onset is recorded in the run's ``summary.json``.
The check reads only the logged evaluations, so it survives a resume and works for every algorithm.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

__all__ = ["HACKING_KEY", "HackingAlarm", "hacking_change", "hacking_alarm", "hacking_alarms"]

#: eval-record key set to 1.0 when the condition holds at that evaluation (0.0 otherwise)
HACKING_KEY = "eval/reward_hacking"


@dataclass(frozen=True)
class HackingAlarm:
    """One onset of reward hacking: at ``epoch``, the proxy changed by ``proxy_change`` and the gold by
    ``gold_change`` over the last ``window`` evaluations (from epoch ``since_epoch``)."""

    epoch: int
    since_epoch: int
    window: int
    proxy_change: float
    gold_change: float

    def message(self, proxy: str = "proxy", gold: str = "gold") -> str:
        return (f"reward hacking: over the last {self.window} evaluations (epochs {self.since_epoch}-{self.epoch}) the proxy "
                f"{proxy} rose by {self.proxy_change:+.4g} while the gold {gold} fell by {self.gold_change:+.4g}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def hacking_change(proxy: Sequence[float], gold: Sequence[float], window: int, tolerance: float = 0.0) -> tuple[float, float] | None:
    """``(Δp, Δg)`` over the last ``window`` evaluations when the proxy rose and the gold fell (module
    docstring), else ``None`` (also with fewer than ``window`` evaluations, or a non-finite mean)."""
    if window < 2:
        raise ValueError(f"the reward-hacking window must span at least 2 evaluations, got {window}")
    if len(proxy) != len(gold):
        raise ValueError(f"{len(proxy)} proxy means but {len(gold)} gold means")
    if len(proxy) < window:
        return None
    proxy_change = float(proxy[-1]) - float(proxy[-window])
    gold_change = float(gold[-1]) - float(gold[-window])
    if not (math.isfinite(proxy_change) and math.isfinite(gold_change)):
        return None
    if proxy_change > tolerance and gold_change < -tolerance:
        return proxy_change, gold_change
    return None


def _gold_evaluations(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [h for h in history if "eval/reward_mean" in h and "eval/gold_mean" in h]


def hacking_alarm(history: Sequence[Mapping[str, Any]], window: int, tolerance: float = 0.0) -> tuple[bool, HackingAlarm | None]:
    """For the newest gold evaluation of ``history``: whether hacking holds there, and the alarm when it is
    an onset (it did not hold at the evaluation before)."""
    records = _gold_evaluations(history)
    proxy = [r["eval/reward_mean"] for r in records]
    gold = [r["eval/gold_mean"] for r in records]
    change = hacking_change(proxy, gold, window, tolerance)
    if change is None:
        return False, None
    before = hacking_change(proxy[:-1], gold[:-1], window, tolerance) is not None
    if before:
        return True, None
    return True, HackingAlarm(epoch=int(records[-1].get("epoch", len(records))), since_epoch=int(records[-window].get("epoch", 0)),
                              window=window, proxy_change=change[0], gold_change=change[1])


def hacking_alarms(proxy: Sequence[float], gold: Sequence[float], window: int, tolerance: float = 0.0) -> list[int]:
    """Indices of the evaluations at which the alarm fires (onsets), for a whole sequence of means."""
    history: list[dict[str, Any]] = []
    fired = []
    for index, (p, g) in enumerate(zip(proxy, gold, strict=True)):
        history.append({"epoch": index, "eval/reward_mean": p, "eval/gold_mean": g})
        if hacking_alarm(history, window, tolerance)[1] is not None:
            fired.append(index)
    return fired
