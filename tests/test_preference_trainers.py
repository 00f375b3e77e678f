"""Diffusion-DPO, Diffusion-KTO and SmPO: losses against float64 formulas written out here, on epsilon, v
and flow models (and video), through the real loop: data loader, encoding, shared pair noise, LoRA."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from diffalign.config import ConfigError
from diffalign.pipelines import load
from diffalign.training import Trainer
from tests.tiny.prefs import write_labels, write_pairs
from tests.test_trainer import base_config

#: tiny model kind -> image size (its VAE halves it)
SIZES = {"sd15": 16, "sd2": 16, "sd3": 32}


def preference_trainer(tiny_model, kind: str, algorithm: str, tmp_path, *, data: dict | None = None, **sections) -> Trainer:
    path = tiny_model(kind)
    if data is None:
        folder = tmp_path / f"data-{kind}"
        manifest = write_labels(folder, SIZES[kind]) if algorithm == "kto" else write_pairs(folder, SIZES[kind])
        data = {"source": str(manifest)}
    config = base_config(algorithm, path, data={"examples_per_epoch": 4, **data}, **sections)
    config["train"]["batch_size"] = 4
    return Trainer(config, adapter=load(str(path)), reward=lambda media, prompts: media.mean(dim=(1, 2, 3)),
                   run_dir=tmp_path / "run")


def perturb_lora(trainer: Trainer, scale: float = 0.3) -> None:
    """Make the policy differ from the reference (a fresh LoRA is exactly zero)."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in trainer.adapter.trainable_named_parameters().items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def noised_and_target(adapter, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """``x_t`` and the regression target in float64, from the schedule's own numbers."""
    x0, noise = x0.double(), noise.double()
    shape = (-1,) + (1,) * (x0.ndim - 1)
    if adapter.prediction_type == "flow":
        sigma = (t.double() / 1000).reshape(shape)
        return (1 - sigma) * x0 + sigma * noise, noise - x0
    a = adapter.scheduler.alphas_cumprod.double()[t.long().cpu()].reshape(shape)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = noise if adapter.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    return x_t, target


def errors64(trainer, x_t, target, cond, *, reference: bool):
    adapter = trainer.adapter
    conditioning = {"cond": cond, "uncond": None}
    t = trainer._t64
    with torch.no_grad():
        if reference:
            with adapter.reference():
                out = adapter.predict(x_t.float(), t, conditioning)
        else:
            out = adapter.predict(x_t.float(), t, conditioning)
    return ((out.double() - target) ** 2).flatten(1).mean(1)


@pytest.mark.parametrize("kind,winner_weight", [("sd15", 0.0), ("sd2", 0.0), ("sd3", 0.0), ("sd15", 0.7), ("sd3", 0.7)])
def test_dpo_loss_matches_float64_formula(tiny_model, tmp_path, kind, winner_weight):
    """``winner_weight = λ₁``: ``L_DPO + λ₁·mean e_θ(x^w)`` (Dual-IPO's term on the preferred sample)."""
    from diffalign.pipelines.base import cat_cond

    trainer = preference_trainer(tiny_model, kind, "dpo", tmp_path, dpo={"beta": 50.0, "winner_weight": winner_weight})
    perturb_lora(trainer)
    batch = trainer.collect(0)
    micro = next(iter(trainer.algorithm.micro_batches(batch, 0, 0)))
    loss, stats = trainer.algorithm.loss(micro)
    _, t, noise = micro
    adapter = trainer.adapter
    x0 = torch.cat([batch.latents[:, 0], batch.latents[:, 1]])
    t2, noise2 = torch.cat([t, t]), torch.cat([noise, noise])  # a pair shares t and noise
    x_t, target = noised_and_target(adapter, x0, noise2, t2)
    cond = cat_cond([batch.conditioning["cond"], batch.conditioning["cond"]])
    trainer._t64 = t2
    e, r = errors64(trainer, x_t, target, cond, reference=False), errors64(trainer, x_t, target, cond, reference=True)
    b = batch.batch_size
    inside = -0.5 * 50.0 * ((e[:b] - r[:b]) - (e[b:] - r[b:]))
    expected = -F.logsigmoid(inside).mean() + winner_weight * e[:b].mean()
    assert abs(loss.item() - expected.item()) < 1e-5 * max(1.0, abs(expected.item()))
    assert stats["implicit_acc"].item() == pytest.approx(((inside > 0).double().mean() + 0.5 * (inside == 0).double().mean()).item())
    assert stats["ref_err_preferred"].item() == pytest.approx(r[:b].mean().item(), rel=1e-5)
    assert not torch.equal(e, r)  # the test compares two different models


def test_dpo_loss_is_log2_when_policy_equals_reference(tiny_model, tmp_path):
    trainer = preference_trainer(tiny_model, "sd15", "dpo", tmp_path)
    batch = trainer.collect(0)
    loss, stats = trainer.algorithm.loss(next(iter(trainer.algorithm.micro_batches(batch, 0, 0))))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats["implicit_acc"].item() == 0.5


def test_dpo_sft_mode_is_the_denoising_loss_of_the_preferred_image(tiny_model, tmp_path):
    trainer = preference_trainer(tiny_model, "sd15", "dpo", tmp_path, dpo={"sft": True})
    perturb_lora(trainer)
    batch = trainer.collect(0)
    micro = next(iter(trainer.algorithm.micro_batches(batch, 0, 0)))
    loss, _ = trainer.algorithm.loss(micro)
    _, t, noise = micro
    x_t, target = noised_and_target(trainer.adapter, batch.latents[:, 0], noise, t)
    trainer._t64 = t
    expected = errors64(trainer, x_t, target, batch.conditioning["cond"], reference=False).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
@pytest.mark.parametrize("utility", ["sigmoid", "loss_averse"])
def test_kto_loss_matches_float64_formula(tiny_model, tmp_path, kind, utility):
    trainer = preference_trainer(tiny_model, kind, "kto", tmp_path, kto={"beta": 20.0, "utility": utility,
                                                                          "undesirable_weight": 0.7})
    perturb_lora(trainer)
    batch = trainer.collect(0)
    micro = next(iter(trainer.algorithm.micro_batches(batch, 0, 0)))
    loss, stats = trainer.algorithm.loss(micro)
    _, t, noise = micro
    x_t, target = noised_and_target(trainer.adapter, batch.latents, noise, t)
    trainer._t64 = t
    e = errors64(trainer, x_t, target, batch.conditioning["cond"], reference=False)
    r = errors64(trainer, x_t, target, batch.conditioning["cond"], reference=True)
    g = r - e
    z0 = g.mean().clamp_min(0)
    desirable = batch.labels.bool()
    x = torch.where(desirable, 1.0, -1.0).double() * 20.0 * (g - z0)
    h = torch.sigmoid(x) if utility == "sigmoid" else F.logsigmoid(x)
    lam = torch.where(desirable, 1.0, 0.7).double()
    expected = (lam * (1 - h)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    # g is a difference of nearly equal errors: float32 x_t round-off shows at ~1e-5 relative
    assert stats["reference_point"].item() == pytest.approx(z0.item(), rel=1e-3, abs=1e-9)
    assert 0 < desirable.sum() < len(desirable)


def test_kto_reference_point_is_detached_and_clamped(tiny_model, tmp_path):
    trainer = preference_trainer(tiny_model, "sd15", "kto", tmp_path)
    algorithm = trainer.algorithm
    g = torch.tensor([-3.0, -1.0, 0.5], requires_grad=True)
    z0 = algorithm.reference_point(g)
    assert z0.item() == 0.0 and not z0.requires_grad  # a negative mean is clamped at 0
    z1 = algorithm.reference_point(torch.tensor([1.0, 2.0], requires_grad=True))
    assert z1.item() == pytest.approx(1.5) and not z1.requires_grad


@pytest.mark.parametrize("kind,timesteps", [("sd15", "official"), ("sd3", "official"), ("sd15", "schedule"), ("sd3", "schedule")])
def test_smpo_loss_matches_float64_formula_on_inverted_latents(tiny_model, tmp_path, kind, timesteps):
    """``official``: x0 inverted through the schedule steps below the drawn t, target and denoiser at t;
    ``schedule``: t is a schedule timestep and x_t lies exactly there."""
    trainer = preference_trainer(tiny_model, kind, "smpo", tmp_path, smpo={"beta": 40.0, "inversion_steps": 4,
                                                                            "renoise_iterations": 1, "timesteps": timesteps})
    perturb_lora(trainer)
    algorithm, adapter = trainer.algorithm, trainer.adapter
    batch = trainer.collect(0)
    micro = next(iter(algorithm.micro_batches(batch, 0, 0)))
    loss, _ = algorithm.loss(micro)
    _, t_pairs, stops = micro
    b = batch.batch_size
    x0 = torch.cat([batch.latents[:, 0], batch.latents[:, 1]])
    grid = adapter._schedule(4, latents=x0)["timesteps"]
    for pair in range(b):
        below = [i for i in range(4) if grid[i] < t_pairs[pair]] if timesteps == "official" else None
        expected_stop = (below[0] if below else 4) if timesteps == "official" else int(stops[pair])
        assert int(stops[pair]) == expected_stop
        if timesteps == "schedule":
            assert t_pairs[pair] == grid[stops[pair]]
    if timesteps == "official":
        assert len(set(t_pairs.tolist())) == b  # drawn per pair, not from the 4-step grid
    # x_t of every image: inversion with the current policy through its pair's schedule steps (x0 if none)
    x_t = torch.cat([x0[i : i + 1] if int(stops[i % b]) == 4 else
                     adapter.invert(x0[i : i + 1], {"cond": {k: v[i % b : i % b + 1] for k, v in batch.conditioning["cond"].items()},
                                                    "uncond": None}, steps=4, renoise_iterations=1,
                                    until_step=int(stops[i % b])).latents[:, 0] for i in range(2 * b)])
    t = torch.cat([t_pairs, t_pairs])
    shape = (-1, 1, 1, 1)
    if adapter.prediction_type == "flow":
        sigma = (t.double() / 1000).reshape(shape)
        noise = (x_t.double() - (1 - sigma) * x0.double()) / sigma
        target = noise - x0.double()
    else:
        a = adapter.scheduler.alphas_cumprod.double()[t.long()].reshape(shape)
        noise = (x_t.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()
        target = noise
    from diffalign.pipelines.base import cat_cond

    cond = cat_cond([batch.conditioning["cond"], batch.conditioning["cond"]])
    trainer._t64 = t
    e, r = errors64(trainer, x_t, target, cond, reference=False), errors64(trainer, x_t, target, cond, reference=True)
    p = batch.labels.double()
    inside = -0.5 * 40.0 * 10.0 * (2 * p - 1) * ((e[:b] - r[:b]) - (e[b:] - r[b:]))
    expected = -F.logsigmoid(inside).mean()
    # beta * T = 400 multiplies the float32 round-off of the error differences (~5e-7) before the sigmoid:
    # the float32 loss can sit ~1e-4 relative from the float64 one; a wrong factor or sign moves it by far more
    assert loss.item() == pytest.approx(expected.item(), rel=5e-4, abs=1e-6)


@pytest.mark.parametrize("model", ["policy", "reference"])
def test_smpo_inverts_with_the_model_it_is_told_to(tiny_model, tmp_path, model):
    """``smpo.inversion_model``: the policy's inversion moves with the LoRA weights, the reference's does not."""
    trainer = preference_trainer(tiny_model, "sd15", "smpo", tmp_path, smpo={"inversion_steps": 3, "inversion_model": model})
    algorithm = trainer.algorithm
    batch = trainer.collect(0)
    x0, indices = batch.latents[:, 0].float(), torch.zeros(batch.batch_size, dtype=torch.long)
    conditioning = {"cond": batch.conditioning["cond"], "uncond": None}
    before = algorithm.inverted(x0, conditioning, indices)
    perturb_lora(trainer)
    after = algorithm.inverted(x0, conditioning, indices)
    with trainer.adapter.reference():
        frozen = trainer.adapter.invert(x0, conditioning, steps=3, renoise_iterations=1, until_step=0).latents[:, 0]
    assert torch.equal(before, after) == (model == "reference")
    if model == "reference":
        assert torch.allclose(after, frozen.to(after), atol=1e-6)


def test_smpo_tie_gives_no_gradient(tiny_model, tmp_path):
    """A soft label of 1/2 (equally good images) makes the smoothed loss constant: log 2, zero gradient."""
    trainer = preference_trainer(tiny_model, "sd15", "smpo", tmp_path, smpo={"inversion_steps": 3})
    perturb_lora(trainer)
    batch = trainer.collect(0)
    batch.labels = torch.full_like(batch.labels, 0.5)
    loss, _ = trainer.algorithm.loss(next(iter(trainer.algorithm.micro_batches(batch, 0, 0))))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in trainer.params)


def test_dpo_trains_on_video_pairs(tiny_model, tmp_path):
    manifest = write_pairs(tmp_path / "videos", 32, count=4, frames=5)
    path = tiny_model("wan")
    config = base_config("dpo", path, data={"source": str(manifest), "examples_per_epoch": 2},
                         sampling={"height": 32, "width": 32, "num_frames": 5, "steps": 2},
                         eval={"every": 0, "steps": 2}, run={"epochs": 1, "checkpoint_every": 0})
    trainer = Trainer(config, adapter=load(str(path)), reward=lambda media, prompts: media.mean(dim=(1, 2, 3, 4)),
                      run_dir=tmp_path / "run")
    perturb_lora(trainer, 0.05)
    before = {k: v.clone() for k, v in trainer.trainable_state_dict().items()}
    batch = trainer.collect(0)
    assert batch.latents.ndim == 6  # B x 2 x C x T x H x W video latents
    trainer.train()
    assert trainer.global_step == 1 and all(math.isfinite(h.get("loss", 0.0)) for h in trainer.history)
    assert any(not torch.equal(before[k], v) for k, v in trainer.trainable_state_dict().items())


def test_preference_trainers_check_their_data(tiny_model, tmp_path):
    path = tiny_model("sd15")
    with pytest.raises(ConfigError, match="data.source is not set"):
        Trainer(base_config("dpo", path), reward=lambda m, p: m.mean(dim=(1, 2, 3)), run_dir=tmp_path / "a")
    manifest = write_pairs(tmp_path / "d", 16)
    with pytest.raises(ConfigError, match="data.kind = 'labels'"):
        Trainer(base_config("dpo", path, data={"source": str(manifest), "kind": "labels"}),
                reward=lambda m, p: m.mean(dim=(1, 2, 3)), run_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="train.batch_size = 3 must divide the 4 samples"):
        Trainer(base_config("dpo", path, data={"source": str(manifest), "examples_per_epoch": 4}, train={"batch_size": 3}),
                reward=lambda m, p: m.mean(dim=(1, 2, 3)), run_dir=tmp_path / "c")
    for value, message in ((float("nan"), "dpo.winner_weight = nan must be a finite number"),
                           (-1.0, "dpo.winner_weight must be a finite number >= 0, got -1.0")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            Trainer(base_config("dpo", path, data={"source": str(manifest)}, dpo={"winner_weight": value}),
                    reward=lambda m, p: m.mean(dim=(1, 2, 3)), run_dir=tmp_path / "d")
    with pytest.raises(ConfigError, match="dpo.sft trains the preferred image's loss alone"):
        Trainer(base_config("dpo", path, data={"source": str(manifest)}, dpo={"sft": True, "winner_weight": 1.0}),
                reward=lambda m, p: m.mean(dim=(1, 2, 3)), run_dir=tmp_path / "e")


@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_resume_mid_dataset_matches_the_uninterrupted_run(tiny_model, tmp_path, algorithm):
    """4 examples an epoch from 8 rows (prompt dropout, cached latents, class balance for KTO): the checkpoint
    after epoch 2 sits at the start of the second pass, epoch 3 draws from the reshuffled pass."""
    manifest = (write_labels if algorithm == "kto" else write_pairs)(tmp_path / "data", 16)
    data = {"source": str(manifest), "examples_per_epoch": 4, "prompt_dropout": 0.3, "cache_latents": True,
            **({"positive_ratio": 0.6} if algorithm == "kto" else {})}
    sections = {"run": {"epochs": 3, "checkpoint_every": 2, "keep_checkpoints": 1}, "train": {"ema": True, "ema_every": 1}}
    straight = preference_trainer(tiny_model, "sd15", algorithm, tmp_path / "straight", data=data, **sections)
    straight.train()
    first = preference_trainer(tiny_model, "sd15", algorithm, tmp_path / "resumed", data=data, **sections)
    first.train(stop_after=2)
    del first
    second = preference_trainer(tiny_model, "sd15", algorithm, tmp_path / "resumed", data=data, **sections)
    second.resume()
    assert second.epoch == 2 and second.algorithm.loader.position == 8
    second.train()
    a, b = straight.trainable_state_dict(), second.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.algorithm.loader.state_dict() == second.algorithm.loader.state_dict()
    assert [h.get("loss") for h in straight.history] == [h.get("loss") for h in second.history]


def test_dpo_lora_loads_in_stock_diffusers(tiny_model, tmp_path):
    from diffusers import DiffusionPipeline

    trainer = preference_trainer(tiny_model, "sd15", "dpo", tmp_path, run={"epochs": 2, "checkpoint_every": 0})
    trainer.train()
    final = tmp_path / "run" / "final"
    pipe = DiffusionPipeline.from_pretrained(str(tiny_model("sd15")))
    pipe.load_lora_weights(str(final))
    prompt = "a red square"
    ours = trainer.adapter.sample([prompt], steps=3, generator=torch.Generator().manual_seed(3)).media
    with torch.no_grad():
        stock = pipe(prompt, num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(3),
                     output_type="pt").images
    base = load(str(tiny_model("sd15"))).sample([prompt], steps=3, generator=torch.Generator().manual_seed(3)).media
    torch.testing.assert_close(ours, stock, atol=2e-5, rtol=0)
    assert not torch.equal(ours, base)


#: the ShapesWorld preference recipes: recipe -> (manifest of the shared preference data, epochs). KTO needs 40
#: epochs (20: +0.022 +- 0.012, under two standard errors). smpo_shapes is not here: it does not rise yet (seed 0,
#: 20 epochs: lr 3e-3 -0.041, lr 1e-3 -0.016, beta 300 -0.084; the ablations are in its recipe's header).
PREFERENCE_RISE = {"dpo_shapes": ("pairs.jsonl", 20), "kto_shapes": ("labels.jsonl", 40)}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(PREFERENCE_RISE))
def test_preference_recipe_raises_held_out_judge_score(tmp_path, recipe, shapes_rise):
    """ShapesWorld: training on the model's own samples labelled by the judge (``prefs build``) raises the judge's
    score on 256 held-out prompts (the paired two-seed test of ``tests/shapes_rise.py``)."""
    manifest, epochs = PREFERENCE_RISE[recipe]
    data = shapes_rise.preference_data() / manifest
    shapes_rise.assert_rises(recipe, [f"data.source={data}", f"run.epochs={epochs}"], tmp_path)
