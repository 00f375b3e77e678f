"""Reward backpropagation (DRaFT-K/LV, AlignProp, ReFL): gradients against finite differences, the gradient
window by hooks, checkpointing, AlignProp's per-trajectory truncation, ReFL's loss, refusal of
non-differentiable rewards, recipes and a short run that raises a differentiable reward.

The tiny pipeline's random VAE barely reacts to its latents, so (as in ``tests/test_trainer.py``) the decoder
is replaced by ``sigmoid(latents[:, :3])`` where a reward must move; the sampler, windows, LoRA and losses are
the real code."""
from __future__ import annotations

import random

import pytest
import torch

from diffalign.config import ConfigError, load_config
from diffalign.pipelines import load
from diffalign.training import Trainer
from diffalign.training.algorithms.backprop import alignprop_truncation_step, reward_loss
from tests.test_trainer import PROMPTS, base_config, sensitive_decode

STEPS = 4


class TinyReward:
    """A fixed differentiable image reward: ``r = mean_{c,h,w} media · pattern`` (a seeded pattern in [-1, 1]
    of the media's shape)."""

    differentiable = True
    name = "tiny_pattern"

    def __call__(self, media: torch.Tensor, prompts) -> torch.Tensor:
        pattern = torch.rand(media.shape[1:], generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
        return (media * pattern.to(media.device, media.dtype)).mean(dim=(1, 2, 3))


def brightness(media: torch.Tensor, prompts) -> torch.Tensor:
    return media.mean(dim=tuple(range(1, media.ndim)))


brightness.differentiable = True


def double_adapter(tiny_model):
    """The tiny SD 1.5 pipeline in float64; only ``conv_out.bias`` (4 numbers) is trainable."""
    adapter = load(str(tiny_model("sd15")))
    adapter.pipe.to(torch.float64)
    adapter.decode = sensitive_decode_double
    unet = adapter.trainable_denoiser
    unet.requires_grad_(False)
    unet.conv_out.bias.requires_grad_(True)
    return adapter


def sensitive_decode_double(latents: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(latents[:, :3])


def objective(adapter, reward, prompts=PROMPTS[:2], **options) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(10 + i) for i in range(len(prompts))]
    rollout = adapter.sample(prompts, steps=STEPS, generator=gens, **options)
    return reward(rollout.media, prompts).sum()


#: the entries of ``conv_out.bias`` perturbed by the finite differences
PERTURBED = (0, 3)


def finite_difference(adapter, fn, h: float = 1e-5) -> torch.Tensor:
    bias = adapter.trainable_denoiser.conv_out.bias
    grads = torch.zeros(len(PERTURBED), dtype=bias.dtype)
    with torch.no_grad():
        for j, i in enumerate(PERTURBED):
            bias[i] += h
            up = fn()
            bias[i] -= 2 * h
            down = fn()
            bias[i] += h
            grads[j] = (up - down) / (2 * h)
    return grads


def autograd(adapter, fn) -> torch.Tensor:
    bias = adapter.trainable_denoiser.conv_out.bias
    (grad,) = torch.autograd.grad(fn(), bias)
    return grad[list(PERTURBED)]


# ------------------------------------------------------------------------------ gradients
def test_full_and_windowed_gradients_equal_finite_differences(tiny_model):
    adapter = double_adapter(tiny_model)
    reward = TinyReward()
    # full backprop through all steps: the exact gradient of the sampled reward
    prompts = PROMPTS[:1]
    full = autograd(adapter, lambda: objective(adapter, reward, prompts, with_grad=True))
    fd_full = finite_difference(adapter, lambda: objective(adapter, reward, prompts))
    assert full.abs().max() > 1e-6
    torch.testing.assert_close(full, fd_full, rtol=1e-6, atol=1e-9)

    # a K-step window: the exact gradient of the last K steps run from the (fixed) latents at step S-K
    k = 2
    gens = [torch.Generator().manual_seed(10 + i) for i in range(len(prompts))]
    with torch.no_grad():
        head = adapter.sample(prompts, steps=STEPS, generator=gens, until_step=STEPS - k, decode=False)
    start = head.latents[:, -1]

    def tail(**options):
        rollout = adapter.sample(prompts, steps=STEPS, latents=start, from_step=STEPS - k, **options)
        return reward(rollout.media, prompts).sum()

    windowed = autograd(adapter, lambda: objective(adapter, reward, prompts, grad_steps=k))
    fd_tail = finite_difference(adapter, tail)
    torch.testing.assert_close(windowed, fd_tail, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(windowed, autograd(adapter, lambda: tail(with_grad=True)))
    assert not torch.allclose(windowed, full)  # truncation changes the gradient


def record_denoiser_outputs(adapter):
    """Forward hook: every denoiser call's output, kept with ``retain_grad`` when it has a graph."""
    outputs = []

    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output.sample
        if out.requires_grad:
            out.retain_grad()
        outputs.append(out)

    return outputs, adapter.trainable_denoiser.register_forward_hook(hook)


def lora_adapter(tiny_model, kind: str = "sd15"):
    adapter = load(str(tiny_model(kind)))
    adapter.decode = sensitive_decode
    adapter.add_lora(rank=4)
    return adapter


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_only_the_last_k_denoiser_calls_receive_gradient(tiny_model, kind):
    adapter = lora_adapter(tiny_model, kind)
    outputs, handle = record_denoiser_outputs(adapter)
    backward_calls = []
    last_layer = adapter.trainable_denoiser.conv_out if kind == "sd15" else adapter.trainable_denoiser.proj_out
    up_hook = last_layer.register_full_backward_hook(lambda m, gi, go: backward_calls.append(1))
    k = 2
    objective(adapter, TinyReward(), grad_steps=k).backward()
    handle.remove()
    up_hook.remove()
    assert len(outputs) == STEPS
    for index, out in enumerate(outputs):
        if index < STEPS - k:
            assert not out.requires_grad and out.grad is None
        else:
            assert out.grad is not None and out.grad.abs().sum() > 0
    assert len(backward_calls) == k  # the backward pass runs through exactly K denoiser calls
    grads = [p.grad for p in adapter.trainable_parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    adapter = lora_adapter(tiny_model)
    params = adapter.trainable_parameters()
    forward_calls = []
    handle = adapter.trainable_denoiser.register_forward_pre_hook(lambda m, a: forward_calls.append(1))

    def grads(checkpoint: bool) -> list[torch.Tensor]:
        forward_calls.clear()
        loss = objective(adapter, TinyReward(), grad_steps=3, checkpoint_denoiser=checkpoint)
        return list(torch.autograd.grad(loss, params))

    plain = grads(False)
    assert len(forward_calls) == STEPS
    recomputed = grads(True)
    assert len(forward_calls) == STEPS + 3  # each kept call runs again in the backward pass
    handle.remove()
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert sum(float(g.abs().sum()) for g in plain) > 0


def test_real_vae_decode_passes_gradient(tiny_model):
    adapter = load(str(tiny_model("sd15")))
    adapter.add_lora(rank=4)
    loss = objective(adapter, TinyReward(), grad_steps=1)
    grads = torch.autograd.grad(loss, adapter.trainable_parameters())
    total = sum(float(g.abs().sum()) for g in grads)
    assert total > 0 and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", ["sd15", "sd2", "sd3"])
def test_predicted_x0_inverts_the_forward_process(tiny_model, kind):
    """The true training target at ``x_t = add_noise(x0, ε, t)`` gives back ``x0`` (ε, v and flow velocity)."""
    adapter = load(str(tiny_model(kind)))
    x0 = torch.randn(2, 4, 8, 8)
    noise = torch.randn(2, 4, 8, 8)
    t = torch.tensor([700, 150])
    x_t = adapter.add_noise(x0, noise, t)
    torch.testing.assert_close(adapter.predicted_x0(adapter.training_target(x0, noise, t), x_t, t), x0,
                               rtol=1e-4, atol=1e-4)


def test_sample_window_arguments_are_checked(tiny_model):
    adapter = lora_adapter(tiny_model)
    with pytest.raises(ValueError, match=r"grad_steps must be in \[1, 4\]"):
        adapter.sample(PROMPTS[:1], steps=STEPS, grad_steps=5)
    with pytest.raises(ValueError, match="from_step=2 needs the latents"):
        adapter.sample(PROMPTS[:1], steps=STEPS, from_step=2)
    with pytest.raises(ValueError, match="from_step and until_step"):
        adapter.sample(PROMPTS[:1], steps=STEPS, until_step=0)


# ---------------------------------------------------------------------------- algorithms
def make(tiny_model, algorithm: str, run_dir, reward=None, **sections):
    sections.setdefault("sampling", {})
    sections["sampling"] = {"steps": STEPS, "group_size": 1, "stochastic": False, **sections["sampling"]}
    sections["run"] = {"checkpoint_every": 0, **sections.get("run", {})}
    config = base_config(algorithm, tiny_model("sd15"), **sections)
    adapter = load(str(tiny_model("sd15")))
    adapter.decode = sensitive_decode
    return Trainer(config, adapter=adapter, reward=reward or TinyReward(), run_dir=run_dir)


def test_alignprop_truncation_point_is_drawn_once_per_trajectory(tiny_model, tmp_path):
    import math

    draws = [alignprop_truncation_step(random.Random(i), 50) for i in range(2000)]
    assert min(draws) >= 1 and max(draws) <= 49
    # round(N(42, 5²)) conditioned on [1, 49]: the cut at 49 pulls the mean to about 41.2
    cdf = [0.5 * (1 + math.erf((k - 42) / (5 * math.sqrt(2)))) for k in [x + 0.5 for x in range(0, 50)]]
    mass = {k: cdf[k] - cdf[k - 1] for k in range(1, 50)}
    expected = sum(k * p for k, p in mass.items()) / sum(mass.values())
    assert abs(sum(draws) / len(draws) - expected) < 0.35, (sum(draws) / len(draws), expected)
    assert {alignprop_truncation_step(random.Random(i), 10) for i in range(200)} <= set(range(1, 10))
    assert alignprop_truncation_step(random.Random(0), 10, "fixed") == 9  # step 49 of 50 -> the last of 10

    steps = 10
    trainer = make(tiny_model, "alignprop", tmp_path, sampling={"steps": steps, "batch_size": 4},
                   alignprop={"truncation_std": 20.0, "truncation_mean": 30.0, "checkpoint_denoiser": False})
    algo = trainer.algorithm
    batch = algo.collect(0)
    first = algo.truncation_steps(batch, 0, 0)
    assert torch.equal(first, algo.truncation_steps(batch, 0, 0))  # a trajectory's draw is fixed by its seed
    assert len(set(first.tolist())) > 1  # and differs between trajectories
    outputs, handle = record_denoiser_outputs(trainer.adapter)
    loss, stats = algo.loss((batch, 0, 0))
    loss.backward()
    handle.remove()
    assert len(outputs) == steps and float(stats["truncation_step"]) == float(first.float().mean())
    for b in range(batch.batch_size):
        has_grad = [out.grad is not None and bool(out.grad[b].abs().sum() > 0) for out in outputs]
        # one cut per trajectory: no gradient before its truncation step, gradient at and after it
        assert has_grad == [i >= int(first[b]) for i in range(steps)], (b, first.tolist(), has_grad)


def test_refl_loss_equals_an_independent_computation(tiny_model, tmp_path):
    from diffusers import DDIMScheduler

    steps = 8
    trainer = make(tiny_model, "refl", tmp_path, sampling={"steps": steps, "batch_size": 4},
                   refl={"target": 0.6, "loss_scale": 0.5})
    algo, adapter, reward = trainer.algorithm, trainer.adapter, trainer.reward
    batch = algo.collect(0)
    mid = algo.gradient_step(batch, 0, 0)
    assert 6 <= mid <= 7
    loss, stats = algo.loss((batch, 0, 0))

    scheduler = DDIMScheduler.from_config(adapter.pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    unet, pipe = adapter.trainable_denoiser, adapter.pipe
    with torch.no_grad():
        embeds = pipe.encode_prompt(batch.prompts, "cpu", 1, False)[0]
        x = pipe.prepare_latents(4, 4, 16, 16, torch.float32, "cpu", algo.sample_generators(batch, 0, 0))
        for t in scheduler.timesteps[:mid]:
            x = scheduler.step(unet(x, t, encoder_hidden_states=embeds).sample, t, x).prev_sample
        t = scheduler.timesteps[mid]
        x0 = scheduler.step(unet(x, t, encoder_hidden_states=embeds).sample, t, x).pred_original_sample
        r = reward(torch.sigmoid(x0[:, :3]), None)
    expected = (0.5 * torch.relu(0.6 - r)).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats["reward_mean"], r.mean(), rtol=1e-4, atol=1e-6)
    assert expected > 0 and stats["gradient_step"] == mid


def refl_with_pretraining(tiny_model, run_dir, weight: float, **sections):
    """ReFL on 4 prompts an epoch with one pre-training example (a tiny winners manifest) riding with each."""
    from tests.tiny.prefs import write_winners

    data = {"source": str(write_winners(run_dir.parent / "pretrain-data", 16, count=8)), "examples_per_epoch": 4}
    sections["sampling"] = {"batch_size": 4, "batches_per_epoch": 1, **sections.get("sampling", {})}
    return make(tiny_model, "refl", run_dir, data=data, refl={"target": 0.6, "pretrain_weight": weight}, **sections)


def test_refl_pretraining_loss_is_the_denoising_error_on_its_data(tiny_model, tmp_path):
    """``L = L_ReFL + w · L_pre``, ``L_pre`` the epsilon error of the UNet on the data examples' noised latents,
    recomputed in float64 from diffusers' own UNet and the schedule's numbers."""
    from tests.test_preference_trainers import noised_and_target

    trainer = refl_with_pretraining(tiny_model, tmp_path / "run", 0.5)
    algo, adapter = trainer.algorithm, trainer.adapter
    batch = algo.collect(0)
    assert batch.extras["real_latents"].shape[:2] == (4, 4) and batch.extras["real_cond"]["prompt_embeds"].shape[0] == 4
    loss, stats = algo.loss((batch, 0, 0))
    algo.pretrain.weight = 0.0
    reward_only, _ = algo.loss((batch, 0, 0))
    torch.testing.assert_close(loss.detach(), reward_only.detach() + 0.5 * stats["pretrain_loss"], rtol=1e-5, atol=1e-7)

    gens = [algo.generator("pretrain", int(i)) for i in batch.sample_index.tolist()]
    x0 = batch.extras["real_latents"]
    noise = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in gens])
    t = torch.cat([adapter.sample_training_timesteps(1, generator=g).reshape(1) for g in gens])
    x_t, target = noised_and_target(adapter, x0, noise, t)
    unet = adapter.trainable_denoiser
    with torch.no_grad():
        prediction = unet(x_t.float(), t, encoder_hidden_states=batch.extras["real_cond"]["prompt_embeds"]).sample.double()
    expected = ((prediction - target) ** 2).mean()
    torch.testing.assert_close(stats["pretrain_loss"].double(), expected, rtol=1e-4, atol=1e-7)
    assert expected > 0


def test_refl_pretraining_pulls_the_model_toward_its_data(tiny_model, tmp_path):
    """With a large pre-training weight the denoising error on the data falls, and below ReFL alone's."""
    probe = refl_with_pretraining(tiny_model, tmp_path / "probe", 1.0)
    batch = probe.algorithm.collect(0)

    def error(trainer) -> float:
        """The probe's pre-training loss on its first batch, under ``trainer``'s weights."""
        probe.adapter.trainable_denoiser.load_state_dict(trainer.adapter.trainable_denoiser.state_dict())
        with torch.no_grad():
            return probe.algorithm.pretrain.loss(batch.extras, batch.sample_index).item()

    start = error(probe)
    settings = {"run": {"epochs": 8}, "train": {"learning_rate": 3e-3, "ema": False}}
    with_data = refl_with_pretraining(tiny_model, tmp_path / "with", 20.0, **settings)
    with_data.train()
    alone = make(tiny_model, "refl", tmp_path / "alone", sampling={"batch_size": 4, "batches_per_epoch": 1},
                 refl={"target": 0.6}, **settings)
    alone.train()
    errors = {"start": start, "with pre-training": error(with_data), "ReFL alone": error(alone)}
    assert errors["with pre-training"] < min(errors["start"], errors["ReFL alone"]), errors


def test_refl_pretraining_resumes_exactly_and_refuses_bad_settings(tiny_model, tmp_path):
    from tests.test_trainer import trainable

    run = {"epochs": 3, "checkpoint_every": 2, "keep_checkpoints": 1}
    straight = refl_with_pretraining(tiny_model, tmp_path / "straight", 1.0, run=run)
    straight.train()
    first = refl_with_pretraining(tiny_model, tmp_path / "resumed", 1.0, run=run)
    first.train(stop_after=2)
    second = refl_with_pretraining(tiny_model, tmp_path / "resumed", 1.0, run=run)
    second.resume()
    assert second.algorithm.pretrain.loader.position == 8  # two epochs of 4 examples drawn before the stop
    second.train()
    a, b = trainable(straight), trainable(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h.get("pretrain_loss") for h in straight.history] == [h.get("pretrain_loss") for h in second.history]

    with pytest.raises(ConfigError, match="refl.pretrain_weight > 0 needs real examples: set data.source"):
        make(tiny_model, "refl", tmp_path / "a", refl={"pretrain_weight": 1.0})
    with pytest.raises(ConfigError, match="data.source is set but refl.pretrain_weight = 0"):
        refl_with_pretraining(tiny_model, tmp_path / "b", 0.0)
    with pytest.raises(ConfigError, match="refl.pretrain_weight = nan must be a finite number"):
        refl_with_pretraining(tiny_model, tmp_path / "c", float("nan"))
    with pytest.raises(ConfigError, match="refl.pretrain_weight must be a finite number >= 0, got -1.0"):
        refl_with_pretraining(tiny_model, tmp_path / "c2", -1.0)
    with pytest.raises(ConfigError, match="data.examples_per_epoch = 4 must equal the epoch's prompts .* = 8"):
        refl_with_pretraining(tiny_model, tmp_path / "d", 1.0, sampling={"batch_size": 4, "batches_per_epoch": 2})


def test_reward_loss_shapes():
    r = torch.tensor([0.5, 3.0])
    torch.testing.assert_close(reward_loss(r, "linear", 0.0, 2.0), torch.tensor([-1.0, -6.0]))
    torch.testing.assert_close(reward_loss(r, "abs", 2.0, 0.1), torch.tensor([0.15, 0.1]))
    torch.testing.assert_close(reward_loss(r, "relu", 2.0, 1.0), torch.tensor([1.5, 0.0]))


def test_draft_lv_adds_renoised_last_steps(tiny_model, tmp_path):
    trainer = make(tiny_model, "draft", tmp_path, draft={"lv_loops": 2})
    calls = []
    handle = trainer.adapter.trainable_denoiser.register_forward_pre_hook(lambda m, a: calls.append(1))
    loss, _ = trainer.algorithm.loss((trainer.algorithm.collect(0)[0:2], 0, 0))
    handle.remove()
    assert len(calls) == STEPS + 2  # the trajectory, then one last-step denoise per loop
    loss.backward()
    with pytest.raises(ConfigError, match="draft.lv_loops = 2 .* needs draft.k = 1"):
        make(tiny_model, "draft", tmp_path / "b", draft={"lv_loops": 2, "k": 2})


# ------------------------------------------------------------------------ refusing rewards
@pytest.mark.parametrize("algorithm", ["draft", "alignprop", "refl"])
def test_non_differentiable_reward_is_refused_before_the_model_loads(tiny_model, tmp_path, monkeypatch, algorithm):
    import diffalign.pipelines

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the reward was checked")

    monkeypatch.setattr(diffalign.pipelines, "load", no_loading)
    config = base_config(algorithm, tiny_model("sd15"), sampling={"group_size": 1}, reward={"spec": "jpeg_compressibility"})
    with pytest.raises(ConfigError) as err:
        Trainer(config, run_dir=tmp_path)
    message = str(err.value)
    assert "'jpeg_compressibility'" in message and "not differentiable" in message and "\n" not in message

    def plain(media, prompts):
        return media.mean(dim=(1, 2, 3))

    with pytest.raises(ConfigError, match="reward 'plain' is not differentiable"):
        Trainer(config, reward=plain, run_dir=tmp_path)


def test_scorers_declare_whether_they_are_differentiable():
    from diffalign.scorers import SCORERS

    for name in ("clip", "pickscore", "aesthetic", "hps", "imagereward"):
        assert SCORERS.get(name).differentiable, name
    for name in ("jpeg_compressibility", "shapes", "critic"):
        assert not SCORERS.get(name).differentiable, name


# --------------------------------------------------------------------------------- training
@pytest.mark.parametrize("algorithm,options", [
    ("draft", {}), ("alignprop", {"loss": "linear", "target": 0.0, "loss_scale": 1.0}), ("refl", {"target": 1.0, "loss_scale": 1.0})])
def test_short_training_run_raises_the_reward(tiny_model, tmp_path, algorithm, options):
    trainer = make(tiny_model, algorithm, tmp_path, reward=brightness, run={"epochs": 4},
                   sampling={"batch_size": 4, "steps": STEPS}, train={"batch_size": 4, "learning_rate": 3e-2},
                   eval={"steps": STEPS, "use_ema": False}, **{algorithm: options})
    before = trainer.evaluate(save_grid=False)["eval/reward_mean"]
    trainer.train()
    after = trainer.evaluate(save_grid=False)["eval/reward_mean"]
    rows = [h for h in trainer.history if "loss" in h]
    assert len(rows) == 4 and all("reward_mean" in r for r in rows)
    assert after > before + 0.01, (before, after)
    if algorithm != "refl":  # ReFL's loss is taken at a step drawn per batch: epochs are not comparable
        assert rows[-1]["loss"] < rows[0]["loss"]


RECIPES = {
    "draft1_sd15": ("draft", "aesthetic"), "alignprop_sd15": ("alignprop", "aesthetic"), "refl_sd15": ("refl", "imagereward"),
    "draft_shapes": ("draft", "shapes_reward"), "alignprop_shapes": ("alignprop", "shapes_reward"),
    "refl_shapes": ("refl", "shapes_reward"),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipes_load_with_their_algorithm_and_reward(recipe):
    from diffalign.training.algorithms import ALGORITHMS
    from diffalign.training.trainer import recipe_path

    config = load_config(recipe_path(recipe))
    algorithm, reward = RECIPES[recipe]
    assert config.run.algorithm == algorithm and config.reward.spec == reward
    ALGORITHMS.get(algorithm)(config)  # the algorithm accepts the recipe's values
    if recipe == "alignprop_sd15":
        c = config.section("alignprop")
        assert (c.truncation, c.truncation_mean, c.truncation_std, c.loss, c.target, c.loss_scale) == (
            "gaussian", 42.0, 5.0, "abs", 10.0, 0.01)
        assert config.train.learning_rate == 1e-3 and config.sampling.steps == 50 and config.sampling.guidance_scale == 5.0
    if recipe == "refl_sd15":
        c = config.section("refl")
        assert (c.loss, c.target, c.loss_scale, c.min_step_fraction) == ("relu", 2.0, 1e-3, 0.75)
        assert config.sampling.steps == 40 and config.train.learning_rate == 1e-5 and not config.model.lora
    if recipe == "draft1_sd15":
        assert config.section("draft").k == 1 and config.sampling.steps == 50


def test_demo_runs_reward_backprop(tmp_path, tiny_shapes_models):
    """``diffalign demo --algorithm draft|alignprop|refl`` on its recipe, with a registered differentiable scorer in
    place of ``shapes_reward`` (the demo's default reward)."""
    import json

    from diffalign.demo import DEMO_SETTINGS, run_demo
    from diffalign.scorers import Scorer, register_scorer

    @register_scorer("test_differentiable_brightness", overwrite=True)  # a name of its own: other test files register theirs
    class Brightness(Scorer):
        name = "test_differentiable_brightness"
        differentiable = True
        needs_prompts = False

        def score_images(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    assert {"draft", "alignprop", "refl"} <= set(DEMO_SETTINGS)
    algorithm = "alignprop"  # the others run the same demo path with their own recipe (see the recipe tests)
    overrides = ["sampling.batch_size=2", "sampling.batches_per_epoch=1", "sampling.steps=3", "train.batch_size=2",
                 "eval.steps=2", "prompts.num_eval=2", "eval.batch_size=2", "run.log_with=", "reward.spec=test_differentiable_brightness"]
    result = run_demo(tmp_path / "demo", algorithm=algorithm, model=str(tiny_shapes_models / "shapes-sd"), epochs=1,
                      prompts_per_task=1, images_per_prompt=1, overrides=overrides, progress=False, log=lambda *a: None)
    rows = [json.loads(line) for line in (result.out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r and "reward_mean" in r and r["global_step"] == 1 for r in rows)
    assert (result.out / "train" / "final" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_refl_on_shapes_reward_raises_held_out_judge_score(tmp_path, shapes_rise):
    """ShapesWorld: ReFL on the learned proxy ``shapes_reward`` raises the exact judge's score (never optimised,
    ``eval.gold``) on 256 held-out prompts, in the paired two-seed test of ``tests/shapes_rise.py``."""
    shapes_rise.assert_rises("refl_shapes", ["eval.gold=shapes"], tmp_path,
                             scores="eval/golds")
