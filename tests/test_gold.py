"""The gold metric beside the proxy, and the reward-hacking alarm (diffalign.training.gold)."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from diffalign.config import ConfigError
from diffalign.errors import UserError
from diffalign.training import Trainer
from diffalign.training.gold import HACKING_KEY, hacking_alarms, hacking_change

SHAPES_PROMPTS = ["a photo of a red square", "a photo of two circles", "a photo of a triangle", "a photo of a blue circle"]


def brute_force_onsets(proxy, gold, window, tolerance):
    """The definition, written out: hacking at i when p[i] - p[i-W+1] > tol and g[i] - g[i-W+1] < -tol; onsets only."""
    holds = [i >= window - 1 and proxy[i] - proxy[i - window + 1] > tolerance and gold[i] - gold[i - window + 1] < -tolerance
             for i in range(len(proxy))]
    return [i for i, h in enumerate(holds) if h and not (i > 0 and holds[i - 1])]


@pytest.mark.parametrize("proxy, gold, window, tolerance, expected", [
    # the proxy keeps rising; the gold rises, then turns down: fires once the window spans the fall
    ([0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.6, 0.7, 0.6, 0.5], 3, 0.0, [4]),
    # both rise, both fall, the gold flat: never
    ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], 2, 0.0, []),
    ([0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], 2, 0.0, []),
    ([0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5], 2, 0.0, []),
    # a long episode warns once; after a recovery a second episode warns again
    ([1, 2, 3, 4, 5, 6, 7, 8], [9, 8, 7, 6, 7, 8, 7, 6], 2, 0.0, [1, 6]),
    # changes within the tolerance are noise
    ([0.50, 0.51, 0.52], [0.50, 0.49, 0.48], 3, 0.05, []),
    ([0.50, 0.60, 0.70], [0.50, 0.40, 0.30], 3, 0.05, [2]),
    # fewer evaluations than the window: never
    ([0.1, 0.9], [0.9, 0.1], 3, 0.0, []),
])
def test_alarm_fires_exactly_at_the_onsets(proxy, gold, window, tolerance, expected):
    assert hacking_alarms(proxy, gold, window, tolerance) == expected == brute_force_onsets(proxy, gold, window, tolerance)


def test_random_sequences_match_the_definition():
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 12, (1,), generator=generator))
        proxy = torch.randn(n, generator=generator).cumsum(0).tolist()
        gold = torch.randn(n, generator=generator).cumsum(0).tolist()
        window = int(torch.randint(2, 5, (1,), generator=generator))
        assert hacking_alarms(proxy, gold, window, 0.1) == brute_force_onsets(proxy, gold, window, 0.1), trial


def test_change_and_bad_windows():
    assert hacking_change([0.0, 0.5, 1.0], [1.0, 0.8, 0.5], 3) == pytest.approx((1.0, -0.5))
    assert hacking_change([0.0, float("nan")], [1.0, 0.0], 2) is None
    with pytest.raises(ValueError, match="at least 2"):
        hacking_change([0.0, 1.0], [1.0, 0.0], 1)


# ------------------------------------------------------------------------------- in the loop
def gold_config(model_path, **eval_options) -> dict:
    return {
        "run": {"algorithm": "ddpo", "epochs": 3, "log_with": [], "progress": False, "checkpoint_every": 0, "seed": 0},
        "model": {"source": str(model_path), "lora": True, "lora_rank": 4},
        "sampling": {"steps": 2, "batch_size": 4, "batches_per_epoch": 1, "group_size": 2, "guidance_scale": 1.0},
        "train": {"batch_size": 2, "learning_rate": 1e-3},
        "advantage": {"mode": "group"},
        "eval": {"steps": 2, "batch_size": 4, "guidance_scale": 1.0, "every": 1, "at_start": True, "grid_images": 0,
                 "gold": "shapes", **eval_options},
        "prompts": {"train_list": SHAPES_PROMPTS, "num_eval": 4},
    }


def brightness(media, prompts):
    return media.float().mean(dim=(1, 2, 3))


def test_a_run_with_a_gold_scorer_logs_both_and_warns_once_when_the_proxy_is_hacked(tiny_model, tmp_path, caplog):
    path = tiny_model("sd15")
    trainer = Trainer(gold_config(path, hacking_window=3), reward=brightness, run_dir=tmp_path / "run")
    from diffalign.scorers.shapes import ShapesScore

    assert isinstance(trainer.gold, ShapesScore)  # the gold scorer is built from eval.gold, never the reward
    # one evaluation with the real judge as gold: its mean is the judge's mean on those images
    result = trainer.evaluate()
    assert result["eval/gold_mean"] == pytest.approx(sum(result["eval/golds"]) / 4)
    assert all(0.0 <= g <= 1.0 for g in result["eval/golds"])

    # then a proxy that rises at every evaluation and a gold that rises once, then falls
    calls = {"proxy": 0, "gold": 0}
    gold_means = [0.5, 0.6, 0.4, 0.3]

    def rising_proxy(media, prompts):
        calls["proxy"] += 1
        return torch.full((len(prompts),), 0.1 * calls["proxy"])

    def falling_gold(media, prompts):
        value = gold_means[calls["gold"]]
        calls["gold"] += 1
        return torch.full((len(prompts),), value)

    trainer.gold = falling_gold
    trainer.evaluate = _with_reward(trainer, rising_proxy)
    with caplog.at_level(logging.WARNING, logger="diffalign.training.trainer"):
        trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/reward_mean" in r]
    assert [r["epoch"] for r in evals] == [0, 1, 2, 3]
    assert all("eval/gold_mean" in r for r in evals)
    assert [r["eval/gold_mean"] for r in evals] == pytest.approx(gold_means)
    # window 3: holds at the evaluations of epochs 2 (0.5 -> 0.4) and 3 (0.6 -> 0.3); warned at the onset only
    assert [r[HACKING_KEY] for r in evals] == [0.0, 0.0, 1.0, 1.0]
    warnings = [r.message for r in caplog.records if "reward hacking" in r.message]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "epochs 0-2" in warnings[0]
    assert "proxy brightness rose" in warnings[0] and "gold shapes fell" in warnings[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["gold"] == "shapes" and summary["proxy"] == "brightness" and len(summary["reward_hacking"]) == 1
    assert summary["reward_hacking"][0]["epoch"] == 2 and summary["reward_hacking"][0]["gold_change"] == pytest.approx(-0.1)
    assert (tmp_path / "run" / "reward_curve.png").stat().st_size > 0
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "eval/gold_mean" in card and "| yes |" in card


def _with_reward(trainer, reward):
    """``trainer.evaluate`` scoring with ``reward`` as the proxy (the training reward stays as it was)."""
    original = trainer.evaluate

    def evaluate(*args, **kwargs):
        kept, trainer.reward = trainer.reward, reward
        try:
            return original(*args, **kwargs)
        finally:
            trainer.reward = kept

    return evaluate


def test_unknown_gold_scorer_is_one_line_error_before_any_model_loads(tiny_model, tmp_path, monkeypatch):
    import diffalign.pipelines

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(diffalign.pipelines, "load", no_load)
    with pytest.raises(UserError) as caught:
        Trainer(gold_config(tiny_model("sd15"), gold="shapes_judge"), reward=brightness, run_dir=tmp_path / "run")
    message = str(caught.value)
    assert "eval.gold" in message and "'shapes_judge'" in message and "shapes" in message and "\n" not in message
    with pytest.raises(ConfigError, match="eval.hacking_window"):
        Trainer(gold_config(tiny_model("sd15"), hacking_window=1), reward=brightness, run_dir=tmp_path / "run2")
