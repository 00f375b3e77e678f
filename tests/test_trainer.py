"""The training loop on tiny models: run folder, accumulation, NaN handling, reward that rises.

The tiny test pipelines have random VAEs whose decoders are almost insensitive to the latents
(pixel means move by ~1e-3 when every latent moves by 3 std), so an image reward barely depends on
the denoiser. Tests that need a reward the denoiser can move replace the adapter's decoder with
``sigmoid(latents[:, :3])`` — a fixed, sensitive stand-in for the frozen VAE — and reward mean
brightness. Everything else (sampler, log-probs, LoRA, losses, loop) is the real code path.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from diffalign.config import ConfigError
from diffalign.pipelines import load
from diffalign.training import Trainer, TrainingDivergedError
from diffalign.training.checkpoint import find_latest_checkpoint, load_state

PROMPTS = ["a red square", "a blue circle", "a green triangle", "two yellow squares"]



def brightness(media: torch.Tensor, prompts) -> torch.Tensor:
    return media.float().mean(dim=tuple(range(1, media.ndim)))


def sensitive_decode(latents: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(latents[:, :3].float())


def base_config(algorithm: str, model_path, **sections) -> dict:
    config = {
        "run": {"algorithm": algorithm, "epochs": 2, "log_with": [], "progress": False, "checkpoint_every": 1, "seed": 0},
        "model": {"source": str(model_path), "lora": True, "lora_rank": 4},
        "sampling": {"steps": 3, "batch_size": 4, "batches_per_epoch": 1, "group_size": 2, "guidance_scale": 1.0},
        "train": {"batch_size": 2, "learning_rate": 1e-3},
        "advantage": {"mode": "group"},
        "eval": {"steps": 3, "batch_size": 4, "guidance_scale": 1.0, "every": 0, "at_start": False},
        "prompts": {"train_list": PROMPTS, "num_eval": 4},
        "awm": {"train_timesteps": 2},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def make_trainer(tiny_model, kind: str, algorithm: str, run_dir, *, reward=brightness, sensitive=True, **sections) -> Trainer:
    path = tiny_model(kind)
    adapter = load(str(path))
    if sensitive:
        adapter.decode = sensitive_decode
    return Trainer(base_config(algorithm, path, **sections), adapter=adapter, reward=reward, run_dir=run_dir)


def trainable(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.trainable_state_dict().items()}


# ------------------------------------------------------------------------------------------ loop
def test_run_folder_and_metrics(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model, "sd15", "ddpo", tmp_path / "run", eval={"every": 1, "at_start": True},
                           train={"ema": True, "ema_every": 1})
    before = trainable(trainer)
    trainer.train()
    run = tmp_path / "run"
    assert (run / "config.toml").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "reward_mean" in r]
    eval_rows = [r for r in rows if "eval/reward_mean" in r]
    assert [r["epoch"] for r in train_rows] == [1, 2] and len(eval_rows) == 3
    for r in train_rows:
        assert math.isfinite(r["loss"]) and r["skipped_steps"] == 0 and "approx_kl" in r and "clipfrac" in r
    assert trainer.global_step == 2
    assert (run / "reward_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [
        "eval_epoch_0000.png", "eval_epoch_0001.png", "eval_epoch_0002.png"]
    assert (run / "final" / "pytorch_lora_weights.safetensors").exists()
    assert [p.name for p in (run / "checkpoints").iterdir()] and find_latest_checkpoint(run).name == "epoch_000002"
    after = trainable(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the EMA differs from the live weights and is what evaluation uses
    with trainer.ema_weights():
        ema = trainable(trainer)
    assert any(not torch.equal(ema[k], after[k]) for k in ema)


def test_held_out_prompts_follow_eval_seed_not_run_seed(tiny_model, tmp_path):
    def held_out(run_seed: int, eval_seed: int) -> list[str]:
        return make_trainer(tiny_model, "sd15", "ddpo", tmp_path / f"run{run_seed}-{eval_seed}", run={"seed": run_seed},
                            eval={"seed": eval_seed}, prompts={"train_list": [], "train": "shapes", "num_eval": 8}).eval_prompts

    # runs that differ only in run.seed are scored on the same prompts
    assert len(set(held_out(0, 1234))) > 1
    assert held_out(0, 1234) == held_out(1, 1234) != held_out(0, 7)


def test_gradient_accumulation_is_derived_and_checked(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model, "sd15", "ddpo", tmp_path / "a",
                           sampling={"batch_size": 4, "batches_per_epoch": 2}, train={"batch_size": 2, "updates_per_epoch": 2})
    # 8 samples / train batch 2 = 4 batches; 2 updates -> 2 batches x 3 trained timesteps per step
    assert trainer.grad_accum == 6
    awm = make_trainer(tiny_model, "sd15", "awm", tmp_path / "b", sampling={"batch_size": 4, "batches_per_epoch": 2,
                       "stochastic": False})
    assert awm.grad_accum == 4  # AWM: every micro-batch of the epoch, one optimizer step
    with pytest.raises(ConfigError, match="train.batch_size = 3 must divide"):
        make_trainer(tiny_model, "sd15", "ddpo", tmp_path / "c", train={"batch_size": 3})
    with pytest.raises(ConfigError, match="train.updates_per_epoch = 3 must divide"):
        make_trainer(tiny_model, "sd15", "ddpo", tmp_path / "d", train={"updates_per_epoch": 3})


def test_group_size_that_does_not_divide_the_batch_fails_before_the_model_loads(tiny_model, tmp_path, monkeypatch):
    """A one-line ConfigError naming both values, raised before the model is loaded (it was a ValueError from the
    prompt sampler after the load)."""
    def no_load(self, adapter):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(Trainer, "_load_adapter", no_load)
    config = base_config("awm", tiny_model("sd15"), sampling={"batch_size": 16, "group_size": 24, "stochastic": False})
    with pytest.raises(ConfigError, match=r"sampling.group_size = 24 must divide .*batch_size 16 x 1 process\(es\) = 16"):
        Trainer(config, reward=brightness, run_dir=tmp_path / "e")


def test_typed_trainer_refuses_other_algorithm(tiny_model, tmp_path):
    from diffalign.training import AWMTrainer

    with pytest.raises(ConfigError, match="AWMTrainer trains 'awm'"):
        AWMTrainer(base_config("ddpo", tiny_model("sd15")), run_dir=tmp_path)


def test_drop_zero_trains_only_on_samples_with_advantage(tiny_model, tmp_path):
    """Flow-GRPO's filter: a prompt whose rewards are all equal contributes no samples to the update."""
    def red_only(media, prompts):
        values = brightness(media, prompts)
        return torch.where(torch.tensor([p == "a red square" for p in prompts]), values, torch.full_like(values, 0.5))

    trainer = make_trainer(tiny_model, "sd15", "flow_grpo", tmp_path / "run", reward=red_only, run={"epochs": 1},
                           prompts={"train_list": ["a red square", "a blue circle"]},
                           sampling={"batches_per_epoch": 2}, advantage={"drop_zero": True})
    seen = []
    loss = trainer.algorithm.loss
    trainer.algorithm.loss = lambda micro: (seen.extend(micro[0].prompts), loss(micro))[1]
    metrics = trainer.train()
    # 8 samples, 4 of each prompt; the 4 red ones fill the 4 train batches (train.batch_size 2 -> 1 each)
    assert metrics["kept_fraction"] == 0.5
    assert seen and set(seen) == {"a red square"}
    with pytest.raises(ConfigError, match="advantage.drop_zero = true is not supported by awm"):
        make_trainer(tiny_model, "sd15", "awm", tmp_path / "awm", sampling={"stochastic": False},
                     advantage={"drop_zero": True})


# ------------------------------------------------------------------------------------ NaN / inf
def test_nan_loss_is_skipped_then_stops_with_clear_error(tiny_model, tmp_path):
    calls = {"n": 0}

    def reward_turning_nan(media, prompts):
        calls["n"] += 1
        values = brightness(media, prompts)
        return values if calls["n"] <= 1 else torch.full_like(values, float("nan"))

    run = tmp_path / "run"
    trainer = make_trainer(tiny_model, "sd15", "flow_grpo", run, reward=reward_turning_nan,
                           run={"epochs": 6, "max_bad_steps": 2, "checkpoint_every": 1})
    with pytest.raises(TrainingDivergedError, match=r"2 consecutive optimizer steps .* Last good checkpoint: .*epoch_000002"):
        trainer.train()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0.0, 1.0]  # epoch 2 skipped and logged, epoch 3 raised
    # skipped steps leave the weights untouched; the checkpoints on disk are intact and loadable
    good = load_state(find_latest_checkpoint(run))
    assert good["trainer_state"]["epoch"] == 2 and good["trainer_state"]["global_step"] == 1
    for name, value in trainer.trainable_state_dict().items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(good["weights"][name], value.float().cpu(), rtol=0, atol=0)


def test_inf_loss_from_the_algorithm_is_skipped(tiny_model, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_model, "sd15", "awm", tmp_path / "run", sampling={"stochastic": False},
                           run={"epochs": 2, "max_bad_steps": 5})
    real_loss = trainer.algorithm.loss
    state = {"n": 0}

    def flaky(micro):
        state["n"] += 1
        loss, stats = real_loss(micro)
        return (loss * float("inf"), stats) if state["n"] == 1 else (loss, stats)

    monkeypatch.setattr(trainer.algorithm, "loss", flaky)
    trainer.train()
    skipped = [h["skipped_steps"] for h in trainer.history if "skipped_steps" in h]
    assert skipped == [1.0, 0.0] and trainer.global_step == 1 and trainer.consecutive_bad_steps == 0


# --------------------------------------------------------------------------------- reward rises
RISE = {
    # algorithm, kind -> (config sections, epochs)
    ("ddpo", "sd15"): {},
    ("flow_grpo", "sd3"): {},
    ("awm", "sd3"): {"sampling": {"stochastic": False}},
}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, kind", list(RISE))
def test_reward_rises_on_held_out_prompts(tiny_model, tmp_path, algorithm, kind):
    sections = {
        "run": {"epochs": 12, "checkpoint_every": 0},
        "model": {"lora_targets": ["to_q", "to_k", "to_v", "to_out.0", "proj_out", "conv_out"], "lora_rank": 8},
        "sampling": {"batch_size": 16, "batches_per_epoch": 1, "group_size": 8},
        "train": {"batch_size": 8, "learning_rate": 1e-2},
        "eval": {"batch_size": 16, "stochastic": True},
        "prompts": {"num_eval": 16},
        "flow_grpo": {"kl_beta": 0.0},
        "awm": {"kl_beta": 0.0, "ema_beta": 0.0},
    }
    for name, values in RISE[(algorithm, kind)].items():
        sections.setdefault(name, {}).update(values)
    trainer = make_trainer(tiny_model, kind, algorithm, tmp_path / "run", **sections)
    start = trainer.evaluate()["eval/reward_mean"]
    trainer.train()
    end = trainer.evaluate()["eval/reward_mean"]
    print(f"{algorithm}/{kind}: held-out reward {start:.4f} -> {end:.4f}")
    assert end > start + 0.01


def test_cli_trains_resumes_and_uses_the_scorer_registry(tiny_model, tmp_path):
    from diffalign.cli import main
    from diffalign.config import load_config, to_toml

    recipe = tmp_path / "tiny.toml"
    config = base_config("awm", tiny_model("sd15"), sampling={"stochastic": False}, reward={"spec": "jpeg_incompressibility"})
    recipe.write_text(to_toml(load_config(config)))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), "--set", "run.epochs=1"]) == 0
    assert find_latest_checkpoint(run).name == "epoch_000001"
    assert main(["train", "--resume", str(run), "--set", "run.epochs=2"]) == 0
    assert find_latest_checkpoint(run).name == "epoch_000002"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "reward_mean" in r] == [1, 2]


#: CI-sized runs of the shipped recipes on shapes-sd (every algorithm is family-agnostic): recipe -> epochs,
#: about 1.5-2.5 minutes of training per seed on one CPU thread.
SHAPES_RISE_EPOCHS = {"awm_shapes": 30, "ddpo_shapes": 30, "flow_grpo_shapes": 40}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(SHAPES_RISE_EPOCHS))
def test_shapes_recipe_raises_held_out_judge_score(tmp_path, recipe, shapes_rise):
    """ShapesWorld: training with the judge as reward raises the judge's score on 256 held-out prompts
    (the paired two-seed test of ``tests/shapes_rise.py``)."""
    shapes_rise.assert_rises(recipe, [f"run.epochs={SHAPES_RISE_EPOCHS[recipe]}"], tmp_path)


# ----------------------------------------------------------------------- the algorithm contract
def test_a_frozen_model_with_another_trainable_trains_only_that_and_evaluates_through_it(tiny_model, tmp_path):
    """The contract FIND stands on: the algorithm freezes the denoiser, trains its own parameter group (own
    learning rate), and evaluation samples through the algorithm, so the trained parameter shows there."""
    from dataclasses import dataclass

    from safetensors.torch import load_file

    from diffalign.config import register_section
    from diffalign.training.algorithms.base import ALGORITHMS, Algorithm, ParamGroup, register_algorithm

    @register_section("test_noise_shift")
    @dataclass
    class ShiftConfig:
        target: float = 1.0

    @register_algorithm
    class NoiseShift(Algorithm):
        name = "test_noise_shift"
        config_class = ShiftConfig
        needs_log_probs = False

        def setup_trainable(self, adapter):
            adapter.trainable_denoiser.requires_grad_(False)
            self.shift = torch.nn.Parameter(torch.zeros(()))

        def parameter_groups(self):
            return [ParamGroup("shift", {"mu": self.shift}, learning_rate=0.1)]

        def micro_steps_per_batch(self):
            return 1

        def micro_batches(self, batch, epoch, inner_epoch):
            yield batch

        def loss(self, micro):
            return (self.shift - self.cfg.target) ** 2, {}

        def evaluation_rollout(self, prompts, generator):
            latents = self.adapter.prepare_latents(len(prompts), generator) + self.shift.detach()
            return self.adapter.sample(prompts, steps=self.config.eval.steps, latents=latents)

    try:
        path = tiny_model("sd15")
        adapter = load(str(path))
        before = {k: v.clone() for k, v in adapter.trainable_denoiser.state_dict().items()}
        config = base_config("test_noise_shift", path, sampling={"stochastic": False}, model={"lora": False},
                             train={"learning_rate": 1e-6, "batch_size": 4}, run={"epochs": 3})
        trainer = Trainer(config, adapter=adapter, reward=brightness, run_dir=tmp_path / "run")
        assert trainer.param_names == ["shift/mu"] and trainer.optimizer.param_groups[0]["lr"] == 0.1
        start = trainer.evaluate()["eval/reward_mean"]
        trainer.train()
        after = adapter.trainable_denoiser.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # the model is bit-identical
        assert 0.2 < trainer.algorithm.shift.item() <= 1.0  # three Adam steps of 0.1 towards 1
        assert trainer.evaluate()["eval/reward_mean"] != start  # evaluation samples through the algorithm
        saved = load_file(str(tmp_path / "run" / "final" / "shift.safetensors"))
        assert saved["mu"].item() == pytest.approx(trainer.algorithm.shift.item())
    finally:
        ALGORITHMS._factories.pop("test_noise_shift", None)


def test_awm_refuses_off_policy_settings(tiny_model):
    from diffalign.config import load_config
    from diffalign.training.algorithms import ALGORITHMS

    for key in ("train.inner_epochs=2", "train.updates_per_epoch=2"):
        config = load_config(base_config("awm", tiny_model("sd15")), [key])
        with pytest.raises(ConfigError, match="on-policy"):
            ALGORITHMS.get("awm")(config)
