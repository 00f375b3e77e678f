"""IPO (iterative preference optimisation with a critic) on the tiny video models, and video through the loop:
rollouts that keep only the final latents, video eval grids and ``diffalign sample`` MP4s."""
from __future__ import annotations

import json
import math

import imageio.v3 as iio
import pytest
import torch

from diffalign.config import ConfigError
from diffalign.pipelines import load
from diffalign.training import Trainer
from diffalign.training.algorithms.ipo import ROUND_SNAPSHOT, borda_pair
from tests.tiny import SMALL_SAMPLE_SIZE
from tests.tiny.prefs import write_winners
from tests.tiny.vlm import build_qwen2_vl

PROMPTS = ["a red cat", "a blue dog", "a green photo", "a red dog"]
#: kind -> frames of its tiny video (the tiny CogVideoX: 9 frames of 16x16; the tiny Wan: 5 of 32x32)
SIZES = {"cogvideox": {"num_frames": 9, "height": 16, "width": 16}, "wan": SMALL_SAMPLE_SIZE["wan"]}


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def brightness(media: torch.Tensor, prompts) -> torch.Tensor:
    return media.float().mean(dim=tuple(range(1, media.ndim)))


def ipo_config(model_path, kind: str, **sections) -> dict:
    size = SIZES[kind]
    config = {
        "run": {"algorithm": "ipo", "epochs": 2, "log_with": [], "progress": False, "checkpoint_every": 1, "seed": 0},
        "model": {"source": str(model_path), "lora": True, "lora_rank": 2},
        "sampling": {"steps": 2, "batch_size": 4, "guidance_scale": 1.0, "stochastic": False, **size},
        "train": {"batch_size": 2, "learning_rate": 5e-2},
        "eval": {"steps": 2, "batch_size": 2, "guidance_scale": 1.0, "every": 1, "at_start": False, "grid_images": 2},
        "prompts": {"train_list": PROMPTS, "num_eval": 2},
        "ipo": {"prompts_per_round": 2, "videos_per_prompt": 2, "examples_per_epoch": 2, "label_batch_size": 1},
        "dpo": {"beta": 50.0},
        "kto": {"beta": 50.0},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def trainable(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.trainable_state_dict().items()}


def test_borda_pair_and_config_errors(tiny_model):
    # P(0 > 1) = 0.8, P(0 > 2) = 0.4, P(1 > 2) = 0.1: Borda 1.2, 0.3, 1.5 -> best 2, worst 1, P(2 > 1) = 0.9
    assert borda_pair(3, {(0, 1): 0.8, (0, 2): 0.4, (1, 2): 0.1}) == (2, 1, pytest.approx(0.9))
    assert borda_pair(2, {(0, 1): 0.5}) is None
    path = tiny_model("cogvideox")
    with pytest.raises(ConfigError, match="eval.every"):
        Trainer(ipo_config(path, "cogvideox", eval={"every": 0}), adapter=load(str(path)), reward=brightness)
    with pytest.raises(ConfigError, match="ipo.videos_per_prompt"):
        Trainer(ipo_config(path, "cogvideox", ipo={"videos_per_prompt": 1}), adapter=load(str(path)), reward=brightness)
    with pytest.raises(ConfigError, match="data.source"):
        Trainer(ipo_config(path, "cogvideox", ipo={"real_weight": 0.5}), adapter=load(str(path)), reward=brightness)


@pytest.mark.parametrize("pairs", ["best_worst", "every"])
def test_pairs_from_scores_and_from_comparisons(tiny_model, tmp_path, pairs):
    """Best vs worst (the paper's) or every two candidates the critic tells apart; ties give no pair."""
    path = tiny_model("cogvideox")
    trainer = Trainer(ipo_config(path, "cogvideox", ipo={"videos_per_prompt": 3, "pairs": pairs}), adapter=load(str(path)),
                      reward=brightness, run_dir=tmp_path / "run")
    chosen = lambda rows: [(r["index"], r["preferred"], r["rejected"], pytest.approx(r["soft_label"])) for r in rows]  # noqa: E731
    scores = {"0:0": 0.2, "0:1": 0.9, "0:2": 0.2, "1:0": 0.5, "1:1": 0.5, "1:2": 0.5}
    rows = chosen(trainer.algorithm._preferences(["a", "b"], scores))
    assert rows == ([(0, 1, 0, 1.0)] if pairs == "best_worst" else [(0, 1, 0, 1.0), (0, 1, 2, 1.0)])
    # Borda: w0 = 0.8 + 0.4, w1 = 0.2 + 0.5, w2 = 0.6 + 0.5 -> best 0, worst 1; P(1 > 2) = 0.5 is a tie
    wins = {"0:0>1": 0.8, "0:0>2": 0.4, "0:1>2": 0.5}
    rows = chosen(trainer.algorithm._preferences(["a"], wins))
    assert rows == ([(0, 0, 1, 0.8)] if pairs == "best_worst" else [(0, 0, 1, 0.8), (0, 2, 0, 0.6)])
    with pytest.raises(ConfigError, match="ipo.pairs"):
        Trainer(ipo_config(path, "cogvideox", ipo={"pairs": "all"}), adapter=load(str(path)), reward=brightness)
    with pytest.raises(ConfigError, match="ipo.pairs = 'every' chooses pairs, but ipo.feedback = 'pointwise'"):
        Trainer(ipo_config(path, "cogvideox", ipo={"pairs": "every", "feedback": "pointwise"}), adapter=load(str(path)),
                reward=brightness)


def test_rollout_keeps_only_the_declared_latents(tiny_model):
    from diffalign.training.algorithms import ALGORITHMS

    assert ALGORITHMS.get("ipo").rollout_latents == "final" and ALGORITHMS.get("ddpo").rollout_latents == "all"
    adapter = load(str(tiny_model("wan")))
    size = SMALL_SAMPLE_SIZE["wan"]
    sample = lambda keep: adapter.sample(["a red cat"] * 2, steps=6, generator=torch.Generator().manual_seed(0),  # noqa: E731
                                         keep_latents=keep, **size)
    whole, final = sample("all"), sample("final")
    assert whole.latents.shape[1] == 7 and final.latents.shape[1] == 1 and final.latent_steps == [6]
    assert torch.equal(final.final_latents, whole.final_latents) and torch.equal(final.media, whole.media)
    assert final.num_steps == whole.num_steps == 6
    latent_bytes = whole.latents[:, 0].numel() * whole.latents.element_size()
    assert whole.nbytes() - final.nbytes() == 6 * latent_bytes
    assert final[1:].latents.shape[1] == 1
    with pytest.raises(ValueError, match="keep_latents"):
        adapter.step_log_prob(adapter.sample(["a"], steps=2, stochastic=True, keep_latents="final", **size), 0)
    with pytest.raises(ValueError, match="keep_latents must be"):
        adapter.sample(["a"], steps=2, keep_latents="some", **size)


def test_sample_writes_mp4s_that_read_back(tiny_model, tmp_path):
    from diffalign.cli import main

    out = tmp_path / "clips.mp4"
    code = main(["sample", "--model", str(tiny_model("cogvideox")), "--prompt", "a red cat", "--num-images", "2",
                 "--steps", "2", "--num-frames", "9", "--fps", "4", "--device", "cpu", "--out", str(out)])
    assert code == 0
    for index in range(2):
        video = iio.imread(tmp_path / f"clips_{index:03d}.mp4")
        assert video.shape == (9, 16, 16, 3)
        assert iio.immeta(tmp_path / f"clips_{index:03d}.mp4")["fps"] == 4
    strip = iio.imread(tmp_path / "clips_frames.png")
    scale = 256 // 16
    assert strip.shape[:2] == ((2 * 18 + 2) * scale, (9 * 18 + 2) * scale)
    assert main(["sample", "--model", str(tiny_model("cogvideox")), "--num-frames", "0", "--out", str(out)]) == 2
    assert main(["sample", "--model", str(tiny_model("cogvideox")), "--out", str(tmp_path / "x.avi")]) == 2


@pytest.mark.parametrize("kind,feedback", [("cogvideox", "pairwise"), ("wan", "pointwise")])
def test_two_rounds_with_the_tiny_vlm_critic(tiny_model, tiny_vlm, tmp_path, kind, feedback):
    path = tiny_model(kind)
    run = tmp_path / "run"
    video = kind == "cogvideox"  # MP4s are checked on one model (each write starts an ffmpeg process)
    config = ipo_config(path, kind, ipo={"feedback": feedback, "critic": "critic", "save_media": video,
                                         "critic_options": {"model": str(tiny_vlm), "video_frames": 2}},
                        eval={"grid_images": 2 if video else 0})
    trainer = Trainer(config, adapter=load(str(path)), reward=brightness, run_dir=run)
    start = trainable(trainer)
    weights_at_round_start = {}
    original_collect = trainer.algorithm.collect

    def collect(epoch):
        weights_at_round_start[epoch] = trainable(trainer)
        batch = original_collect(epoch)
        snapshot = trainer.adapter.snapshot_weights(ROUND_SNAPSHOT)
        for name, value in trainer.adapter.trainable_named_parameters().items():
            assert torch.equal(snapshot[name], value.detach()), "the reference must be the round's starting weights"
        return batch

    trainer.algorithm.collect = collect
    trainer.train()
    assert any(not torch.equal(start[k], v) for k, v in trainable(trainer).items()), "training changed nothing"
    # round 1 starts from round 0's trained weights, so its reference is no longer the base model
    assert any(not torch.equal(weights_at_round_start[0][k], weights_at_round_start[1][k]) for k in start)

    frames, size = SIZES[kind]["num_frames"], (SIZES[kind]["height"], SIZES[kind]["width"])
    train_rows = [r for r in trainer.history if "loss" in r]
    assert [r["epoch"] for r in train_rows] == [1, 2]
    # each round's first loss compares the policy with itself: DPO log 2, KTO 1 - σ(0) = 0.5
    expected = math.log(2) if feedback == "pairwise" else 0.5
    for row in train_rows:
        assert row["loss"] == pytest.approx(expected, abs=1e-5)
    for index in range(2):
        folder = run / "rounds" / f"round_{index:03d}"
        labels = [json.loads(line) for line in (folder / "labels.jsonl").read_text().splitlines()]
        # pairwise: the MLLM critic's compare, one question per prompt (2 videos); pointwise: one per video
        assert len(labels) == (2 if feedback == "pairwise" else 4)
        assert all(0 <= r["value"] <= 1 for r in labels)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["critic_calls"] == len(labels) and metrics["sampled"]
        preferences = [json.loads(line) for line in (folder / "preferences.jsonl").read_text().splitlines()]
        if feedback == "pairwise":
            for row, label in zip(preferences, labels):
                assert row["soft_label"] == pytest.approx(max(label["value"], 1 - label["value"]))
                assert row["preferred"] == (0 if label["value"] > 0.5 else 1)
        else:
            assert [r["desirable"] for r in preferences] == [r["value"] > 0.5 for r in labels]
        report = json.loads((folder / "eval.json").read_text())
        assert report["epoch"] == index + 1 and len(report["eval/rewards"]) == 2
        if video:
            assert iio.imread(folder / "videos" / "0000_1.mp4").shape == (frames, *size, 3)
    if not video:
        return
    grid = iio.imread(run / "samples" / "eval_epoch_0002.mp4")
    assert grid.shape[0] == frames
    strip = iio.imread(run / "samples" / "eval_epoch_0002.png")
    assert strip.shape[1] == frames * (size[1] + 2) + 2  # one row per video, its frames left to right


class CountingCritic:
    """A deterministic critic that records every question and can fail after ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.calls = 0
        self.asked: list[tuple] = []

    def _check(self):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("critic killed")
        self.calls += 1

    def __call__(self, media, prompts):
        self._check()
        return torch.sigmoid(20 * (media.float().mean(dim=(1, 2, 3, 4)) - 0.5))

    def compare(self, first, second, prompts):
        self._check()
        self.asked += [(p, float(a.sum()), float(b.sum())) for p, a, b in zip(prompts, first, second)]
        return torch.sigmoid(50 * (first.float().mean(dim=(1, 2, 3, 4)) - second.float().mean(dim=(1, 2, 3, 4))))


def test_round_killed_while_labelling_resumes_without_asking_again(tiny_model, tmp_path):
    path = tiny_model("cogvideox")
    config = ipo_config(path, "cogvideox", ipo={"videos_per_prompt": 3, "save_media": False}, eval={"grid_images": 0})

    def trainer_for(run_dir, critic):
        trainer = Trainer(config, adapter=load(str(path)), reward=brightness, run_dir=run_dir)
        trainer.algorithm.critic = critic
        return trainer

    whole = CountingCritic()
    uninterrupted = trainer_for(tmp_path / "whole", whole)
    uninterrupted.train()
    per_round = 2 * 3  # 2 prompts x (3 choose 2) comparisons
    assert whole.calls == 2 * per_round and len(set(whole.asked)) == len(whole.asked)

    killed = CountingCritic(fail_after=per_round + 4)  # round 0 and 4 questions of round 1 (one per call)
    first = trainer_for(tmp_path / "killed", killed)
    with pytest.raises(RuntimeError, match="critic killed"):
        first.train()
    labels = tmp_path / "killed" / "rounds" / "round_001" / "labels.jsonl"
    assert len(labels.read_text().splitlines()) == 4
    with open(labels, "a") as f:  # a kill in the middle of writing an answer leaves half a line
        f.write('{"key": "1:1>2", "prom')
    rest = CountingCritic()
    resumed = trainer_for(tmp_path / "killed", rest)
    resumed.resume()
    resumed.train()
    assert rest.calls == per_round - 4, "answers already written must not be asked again"
    assert sorted(killed.asked + rest.asked) == sorted(whole.asked)
    for index in range(2):
        name = f"rounds/round_{index:03d}/labels.jsonl"
        lines = lambda run: sorted((tmp_path / run / name).read_text().splitlines())  # noqa: E731
        assert lines("killed") == lines("whole")
        pref = f"rounds/round_{index:03d}/preferences.jsonl"
        assert (tmp_path / "killed" / pref).read_text() == (tmp_path / "whole" / pref).read_text()
    metrics = json.loads((tmp_path / "killed" / "rounds" / "round_001" / "metrics.json").read_text())
    assert metrics["tries"] == 2 and metrics["critic_calls"] == per_round + 1  # the call that failed counts
    for name, value in trainable(uninterrupted).items():
        assert torch.equal(value, trainable(resumed)[name]), name


def test_real_video_regulariser_adds_lambda_times_the_denoising_error(tiny_model, tmp_path):
    path = tiny_model("cogvideox")
    clips = write_winners(tmp_path / "real", 16, count=4, kind="experts", frames=9)
    config = ipo_config(path, "cogvideox", run={"epochs": 1}, eval={"grid_images": 0},
                        ipo={"real_weight": 0.25, "save_media": False}, data={"source": str(clips), "examples_per_epoch": 2})
    trainer = Trainer(config, adapter=load(str(path)), reward=brightness, run_dir=tmp_path / "run")
    trainer.algorithm.critic = CountingCritic()
    trainer.train()
    row = next(r for r in trainer.history if "loss" in r)
    # at the round's start the DPO term is log 2 exactly; the rest is λ times the real clips' denoising error
    assert row["real_loss"] > 0
    assert row["loss"] == pytest.approx(math.log(2) + 0.25 * row["real_loss"], rel=1e-5)
