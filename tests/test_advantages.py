"""Advantages against their reference formulas; the group prompt sampler across ranks."""
import numpy as np
import pytest
import torch

from diffalign.training.advantages import (
    BatchNormalizer,
    GroupNormalizer,
    PerPromptTracker,
    build_normalizer,
    compute_advantages,
    select_nonzero_advantages,
)
from diffalign.training.prompts import GroupPromptSampler, ListSource, prompt_source


def test_per_prompt_tracker_falls_back_to_batch_stats_then_uses_history():
    tracker = PerPromptTracker(buffer_size=4, min_count=3)
    prompts = ["a", "a", "b", "b"]
    r1 = np.array([1.0, 3.0, 10.0, 20.0])
    adv = tracker.normalize(prompts, r1)
    # fewer than min_count entries: batch mean/std
    np.testing.assert_allclose(adv, (r1 - r1.mean()) / (r1.std() + 1e-6))
    r2 = np.array([5.0, 7.0, 0.0, 0.0])
    adv = tracker.normalize(prompts, r2)
    hist_a = np.array([1.0, 3.0, 5.0, 7.0])
    hist_b = np.array([10.0, 20.0, 0.0, 0.0])
    np.testing.assert_allclose(adv[:2], (r2[:2] - hist_a.mean()) / (hist_a.std() + 1e-6))
    np.testing.assert_allclose(adv[2:], (r2[2:] - hist_b.mean()) / (hist_b.std() + 1e-6))
    # FIFO: the buffer keeps the 4 newest
    tracker.normalize(["a"], np.array([100.0]))
    assert list(tracker.buffers["a"]) == [3.0, 5.0, 7.0, 100.0]


def test_per_prompt_tracker_state_round_trip():
    tracker = PerPromptTracker(buffer_size=3, min_count=1)
    tracker.normalize(["x", "y", "x"], np.array([1.0, 2.0, 3.0]))
    other = PerPromptTracker(buffer_size=3, min_count=1)
    other.load_state_dict(tracker.state_dict())
    r = np.array([4.0, 5.0])
    np.testing.assert_array_equal(tracker.normalize(["x", "y"], r), other.normalize(["x", "y"], r))


@pytest.mark.parametrize("global_std", [True, False])
def test_group_normalizer(global_std):
    prompts = ["p", "q", "p", "q", "p", "q"]
    r = np.array([1.0, 10.0, 2.0, 10.0, 6.0, 10.0])
    adv = GroupNormalizer(global_std).normalize(prompts, r)
    p = r[[0, 2, 4]]
    std_p = r.std() if global_std else p.std()
    np.testing.assert_allclose(adv[[0, 2, 4]], (p - p.mean()) / (std_p + 1e-4))
    np.testing.assert_allclose(adv[[1, 3, 5]], 0.0)  # zero-variance group
    norm = GroupNormalizer(global_std)
    norm.normalize(prompts, r)
    assert norm.stats()["zero_std_group_fraction"] == 0.5


def test_equal_rewards_give_exactly_zero_advantages():
    # the mean of three 0.1s is 0.10000000000000002: dividing the residue by eps would give 2e-13
    adv = GroupNormalizer(global_std=False).normalize(["p"] * 3 + ["q"] * 3, np.array([0.1] * 3 + [0.0, 1.0, 0.25]))
    assert (adv[:3] == 0).all() and (adv[3:] != 0).all()
    tracker = PerPromptTracker(buffer_size=4, min_count=3)
    adv = tracker.normalize(["p"] * 3 + ["q"] * 3, np.array([0.1] * 3 + [0.0, 1.0, 0.25]))
    assert (adv[:3] == 0).all() and (adv[3:] != 0).all()
    # below min_count the batch is the reference: an all-equal batch gives exactly 0 too
    assert (PerPromptTracker(min_count=16).normalize(["a", "b"], np.array([0.1, 0.1])) == 0).all()


def test_select_nonzero_advantages_keeps_batches_equal():
    advantages = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, 0.5, 0.0, 0.0])
    keep = select_nonzero_advantages(advantages, 4, torch.Generator().manual_seed(0))
    # 3 nonzero + 1 refilled zero -> 4, a multiple of 4 batches; sorted, no duplicates
    assert len(keep) == 4 and {1, 3, 5} <= set(keep.tolist()) and keep.tolist() == sorted(set(keep.tolist()))
    assert select_nonzero_advantages(advantages, 3, torch.Generator().manual_seed(0)).tolist() == [1, 3, 5]
    again = select_nonzero_advantages(advantages, 4, torch.Generator().manual_seed(0))
    assert torch.equal(keep, again)
    # all zero: one sample per batch survives, so every process still makes its batches
    assert len(select_nonzero_advantages(torch.zeros(8), 2, torch.Generator().manual_seed(0))) == 2
    with pytest.raises(ValueError, match="num_batches"):
        select_nonzero_advantages(advantages, 0, torch.Generator())


def test_batch_normalizer_and_factory():
    r = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(BatchNormalizer().normalize(["a"] * 3, r), (r - r.mean()) / (r.std() + 1e-8))
    assert isinstance(build_normalizer("group"), GroupNormalizer)
    with pytest.raises(ValueError, match="per_prompt, group or batch"):
        build_normalizer("rank")


def test_compute_advantages_clips_and_keeps_nan_visible():
    rewards = torch.tensor([0.0, 0.0, 0.0, 100.0])
    adv = compute_advantages(BatchNormalizer(), rewards, ["a"] * 4, clip_max=1.5)
    assert adv.max() == 1.5 and adv.min() >= -1.5
    nan = compute_advantages(BatchNormalizer(), torch.tensor([1.0, float("nan")]), ["a", "b"])
    assert torch.isnan(nan).all()  # a NaN reward must not be silently turned into a number
    with pytest.raises(ValueError, match="rewards for"):
        compute_advantages(BatchNormalizer(), rewards, ["a"])


class _FakeAccelerator:
    """Stands in for accelerate with ``world`` ranks whose gathers are given up front."""

    def __init__(self, rank, world, all_rewards, all_prompts):
        self.process_index, self.num_processes = rank, world
        self.device = torch.device("cpu")
        self._rewards, self._prompts = all_rewards, all_prompts

    def gather(self, tensor):
        return self._rewards.to(tensor.dtype)


def test_advantages_use_all_ranks_and_return_the_rank_slice(monkeypatch):
    import accelerate.utils

    prompts = ["a", "b", "a", "b", "a", "b", "a", "b"]
    rewards = torch.tensor([1.0, 5.0, 2.0, 6.0, 3.0, 9.0, 4.0, 8.0])
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda objs: prompts)
    full = compute_advantages(GroupNormalizer(True), rewards, prompts)
    for rank in range(2):
        acc = _FakeAccelerator(rank, 2, rewards, prompts)
        local = compute_advantages(GroupNormalizer(True), rewards[rank * 4 : rank * 4 + 4], prompts[rank * 4 : rank * 4 + 4], acc)
        torch.testing.assert_close(local, full[rank * 4 : rank * 4 + 4])


def test_group_sampler_repeats_prompts_across_ranks():
    source = ListSource([f"prompt {i}" for i in range(20)])
    samplers = [GroupPromptSampler(source, batch_size=3, group_size=4, num_processes=4, process_index=r, seed=7) for r in range(4)]
    for _ in range(3):
        batch = [p for s in samplers for p in s.next_batch()]  # the global batch, rank order
        assert len(batch) == 12
        counts = {p: batch.count(p) for p in batch}
        assert set(counts.values()) == {4} and len(counts) == 3  # 3 prompts x group 4, spread over ranks
    one = GroupPromptSampler(source, batch_size=12, group_size=4, num_processes=1, seed=7)
    restarted = [GroupPromptSampler(source, 3, 4, 4, r, seed=7) for r in range(4)]
    assert one.next_batch() == [p for s in restarted for p in s.next_batch()]  # same global batch for any world size
    with pytest.raises(ValueError, match="group_size = 5 must divide"):
        GroupPromptSampler(source, batch_size=3, group_size=5, num_processes=2)


def test_group_sampler_state_resumes_exactly():
    source = ListSource(["a", "b", "c", "d", "e"])
    s = GroupPromptSampler(source, batch_size=4, group_size=2, seed=1)
    s.next_batch()
    state = s.state_dict()
    expected = [s.next_batch() for _ in range(3)]
    t = GroupPromptSampler(source, batch_size=4, group_size=2, seed=1)
    t.load_state_dict(state)
    assert [t.next_batch() for _ in range(3)] == expected


def test_prompt_sources(tmp_path):
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert sorted(prompt_source(str(tmp_path / "p.txt")).draw(2, 0)) == ["one", "two"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n{"prompt": "y"}\n')
    assert sorted(prompt_source(str(tmp_path / "p.jsonl")).draw(2, 0)) == ["x", "y"]
    assert len(prompt_source("animals").draw(5, 3)) == 5
    with pytest.raises(ValueError, match="unknown prompt source"):
        prompt_source("nope")
    with pytest.raises(ValueError, match="does not exist"):
        prompt_source(str(tmp_path / "missing.txt"))
    shapes = prompt_source("shapes").draw(4, 0)
    assert len(shapes) == 4 and all(isinstance(p, str) and p for p in shapes)
