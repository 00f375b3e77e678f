"""Resume: an interrupted run continued from its checkpoint ends with exactly the uninterrupted weights."""
from __future__ import annotations

import pytest
import torch

from diffalign.training.checkpoint import find_latest_checkpoint, list_checkpoints, write_checkpoint
from tests.test_trainer import make_trainer, trainable

CASES = {
    # DDPO: per-prompt history tracker, weight EMA, 2 updates per epoch
    "ddpo": ("ddpo", "sd15", {"advantage": {"mode": "per_prompt", "min_count": 2}, "train": {"ema": True, "ema_every": 1,
                                                                                           "updates_per_epoch": 2}}),
    # DDPO on Flow-GRPO-Fast rollouts: the per-epoch SDE window and shared initial noise after the resume
    "ddpo_fast": ("ddpo", "sd15", {"advantage": {"mode": "per_prompt", "min_count": 2},
                                   "sampling": {"steps": 4, "sde_window": 2, "sde_window_range": [0, 4], "same_latent": True}}),
    # AWM: the EMA-KL anchor (an adapter snapshot) and deterministic rollouts
    "awm": ("awm", "sd3", {"sampling": {"stochastic": False}, "train": {"ema": True, "ema_every": 1}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_matches_uninterrupted_run(tiny_model, tmp_path, case):
    algorithm, kind, sections = CASES[case]
    sections = {**sections, "run": {"epochs": 3, "checkpoint_every": 2, "keep_checkpoints": 1}}

    straight = make_trainer(tiny_model, kind, algorithm, tmp_path / "straight", **sections)
    straight.train()

    first = make_trainer(tiny_model, kind, algorithm, tmp_path / "resumed", **sections)
    first.train(stop_after=2)  # "killed" after the epoch-2 checkpoint
    assert first.epoch == 2
    del first
    second = make_trainer(tiny_model, kind, algorithm, tmp_path / "resumed", **sections)
    second.resume()
    assert second.epoch == 2 and second.global_step > 0
    second.train()

    a, b = trainable(straight), trainable(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    if straight.ema is not None:
        for x, y in zip(straight.ema.shadow_params, second.ema.shadow_params):
            assert torch.equal(x, y)
    snaps_a, snaps_b = straight.adapter.snapshots_state(), second.adapter.snapshots_state()
    assert snaps_a.keys() == snaps_b.keys() and (algorithm != "awm" or "ema" in snaps_a)
    for name in snaps_a:  # AWM's EMA anchor
        assert all(torch.equal(snaps_a[name][k], snaps_b[name][k]) for k in snaps_a[name])
    assert [h.get("reward_mean") for h in straight.history] == [h.get("reward_mean") for h in second.history]
    # keep_checkpoints = 1: only the newest survives
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == ["epoch_000003"]


def test_partial_checkpoint_is_ignored_and_write_is_atomic(tmp_path):
    ckpts = tmp_path / "checkpoints"
    write_checkpoint(ckpts, 1, weights={"w": torch.ones(2)}, states={}, trainer_state={"epoch": 1}, keep_last=2)
    (ckpts / ".tmp-epoch_000002").mkdir()  # a save interrupted before its rename
    (ckpts / "epoch_000003").mkdir()  # a folder without its state file
    assert find_latest_checkpoint(tmp_path).name == "epoch_000001"
    for epoch in (2, 3, 4):
        write_checkpoint(ckpts, epoch, weights={"w": torch.ones(2) * epoch}, states={}, trainer_state={"epoch": epoch},
                         keep_last=2)
    assert [p.name for p in list_checkpoints(ckpts)] == ["epoch_000003", "epoch_000004"]
    assert not any(p.name.startswith(".tmp") for p in ckpts.iterdir())
