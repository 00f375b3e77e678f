"""SePPO and Diffusion-DRO: losses against float64 formulas written out here (epsilon, v and flow models),
the flipper's rule and the hinge's dead zone on constructed cases, the checkpoint pool and replay buffer
through a checkpoint round trip, and the adapter's per-sample timesteps and per-step predictions."""
from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch
import torch.nn.functional as F

from diffalign.config import ConfigError
from diffalign.pipelines import AdapterError, load
from diffalign.training import Trainer
from diffalign.training.algorithms.base import denoising_errors
from diffalign.training.algorithms.dro import dro_hinge_loss
from diffalign.training.algorithms.pool import CheckpointPool
from diffalign.training.algorithms.seppo import flipper_sign
from tests.test_preference_trainers import SIZES, noised_and_target, perturb_lora
from tests.test_trainer import base_config
from tests.tiny.prefs import write_winners


def winners_trainer(tiny_model, kind: str, algorithm: str, run_dir, *, data: dict | None = None, **sections) -> Trainer:
    path = tiny_model(kind)
    if data is None:
        data = {"source": str(write_winners(run_dir.parent / f"data-{kind}-{algorithm}", SIZES[kind],
                                            kind="winners" if algorithm == "seppo" else "experts"))}
    defaults = {"sample_steps": 3} if algorithm == "seppo" else {"sample_steps": 3, "buffer_size": 4}
    sections[algorithm] = {**defaults, **sections.get(algorithm, {})}
    config = base_config(algorithm, path, data={"examples_per_epoch": 4, **data}, **sections)
    config["train"]["batch_size"] = 4
    return Trainer(config, adapter=load(str(path)), reward=lambda media, prompts: media.mean(dim=(1, 2, 3)),
                   run_dir=run_dir)


def errors64(adapter, x_t, t, cond, target, context=None) -> torch.Tensor:
    with torch.no_grad(), (context if context is not None else contextlib.nullcontext()):
        out = adapter.predict(x_t.float(), t, {"cond": cond, "uncond": None})
    return ((out.double() - target.double()) ** 2).flatten(1).mean(1)


# ------------------------------------------------------------------------------------------------ SePPO
@pytest.mark.parametrize("kind", ["sd15", "sd2", "sd3"])
@pytest.mark.parametrize("flipper", ["sign", "indicator"])
def test_seppo_loss_matches_float64_formula(tiny_model, tmp_path, kind, flipper):
    if kind != "sd15" and flipper == "indicator":
        pytest.skip("the indicator variant differs only in s: one family suffices")
    trainer = winners_trainer(tiny_model, kind, "seppo", tmp_path / "run", seppo={"beta": 50.0, "flipper": flipper})
    adapter, algorithm = trainer.adapter, trainer.algorithm
    perturb_lora(trainer, 0.1)  # the policy moves away from pool/0 (the zero LoRA, i.e. the base)
    batch = trainer.collect(0)
    assert algorithm.current_reference == "seppo/pool/0"
    # the reference sample is the drawn snapshot's (here the base's), not the current policy's
    s = trainer.config.sampling
    gens = [algorithm.generator("reference-sample", int(p)) for p in batch.extras["sample_index"]]
    latents = torch.cat([adapter.prepare_latents(1, g, height=s.height, width=s.width) for g in gens])
    with adapter.reference():
        expected_sample = adapter.sample(batch.prompts, steps=3, guidance_scale=7.5, latents=latents, decode=False).final_latents
    torch.testing.assert_close(batch.extras["reference_latents"], expected_sample.float(), atol=1e-6, rtol=0)
    micro = next(iter(algorithm.micro_batches(batch, 0, 0)))
    loss, stats = algorithm.loss(micro)
    _, t, noise = micro
    cond = batch.conditioning["cond"]
    e, r = {}, {}
    for name, x0 in (("w", batch.latents), ("r", batch.extras["reference_latents"])):
        x_t, target = noised_and_target(adapter, x0, noise, t)
        e[name] = errors64(adapter, x_t, t, cond, target)
        r[name] = errors64(adapter, x_t, t, cond, target, adapter.reference())
    better = r["w"] > e["w"]
    sign = torch.where(better, 1.0, -1.0 if flipper == "sign" else 0.0).double()
    inside = -0.5 * 50.0 * ((e["w"] - r["w"]) - sign * (e["r"] - r["r"]))
    expected = -F.logsigmoid(inside).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert stats["aaf_rate"].item() == pytest.approx((sign != 1).double().mean().item())
    assert not torch.equal(e["w"], r["w"])


def test_flipper_rule_on_known_errors():
    policy = torch.tensor([0.1, 0.3, 0.2])
    ref = torch.tensor([0.2, 0.2, 0.2])  # the current model fits example 0 better, 1 worse, 2 equally
    assert flipper_sign(policy, ref, "sign").tolist() == [1.0, -1.0, -1.0]
    assert flipper_sign(policy, ref, "indicator").tolist() == [1.0, 0.0, 0.0]
    assert flipper_sign(policy, ref, "none").tolist() == [1.0, 1.0, 1.0]


def test_flipper_through_the_model(tiny_model, tmp_path):
    """Policy = drawn reference: every anchor ties, so ``s = -1`` everywhere (a second positive) and the loss is
    log 2. Swapping policy and reference flips every example's ``s``."""
    trainer = winners_trainer(tiny_model, "sd15", "seppo", tmp_path / "run")
    adapter, algorithm = trainer.adapter, trainer.algorithm
    batch = trainer.collect(0)
    micro = next(iter(algorithm.micro_batches(batch, 0, 0)))
    loss, stats = algorithm.loss(micro)
    assert stats["aaf_rate"].item() == 1.0 and loss.item() == pytest.approx(math.log(2), abs=1e-7)
    perturb_lora(trainer, 0.3)
    signs = []
    for _ in range(2):
        errors = denoising_errors(
            adapter, batch.latents, micro[2], micro[1], batch.conditioning, reference=algorithm.current_reference)
        signs.append(flipper_sign(errors.policy, errors.reference, "sign"))
        # swap: the pool snapshot takes the policy's weights and the policy the snapshot's
        name = algorithm.current_reference
        old = {k: v.clone() for k, v in adapter.snapshot_weights(name).items()}
        adapter.save_snapshot(name)
        with torch.no_grad():
            for k, p in adapter.trainable_named_parameters().items():
                p.copy_(old[k])
    assert torch.equal(signs[0], -signs[1]) and (signs[0] == 1).any() and (signs[0] == -1).any()


def test_seppo_trains_on_video_winners(tiny_model, tmp_path):
    path = tiny_model("wan")
    manifest = write_winners(tmp_path / "videos", 32, count=2, frames=5)
    config = base_config("seppo", path, data={"source": str(manifest), "examples_per_epoch": 2},
                         sampling={"height": 32, "width": 32, "num_frames": 5, "steps": 2},
                         seppo={"sample_steps": 2, "sample_guidance_scale": 1.0},
                         eval={"every": 0, "steps": 2}, run={"epochs": 1, "checkpoint_every": 0})
    trainer = Trainer(config, adapter=load(str(path)), reward=lambda media, prompts: media.mean(dim=(1, 2, 3, 4)),
                      run_dir=tmp_path / "run")
    perturb_lora(trainer, 0.05)
    before = {k: v.clone() for k, v in trainer.trainable_state_dict().items()}
    trainer.train()
    record = next(h for h in trainer.history if "loss" in h)
    assert trainer.global_step == 1 and math.isfinite(record["loss"]) and "aaf_rate" in record
    assert any(not torch.equal(before[k], v) for k, v in trainer.trainable_state_dict().items())


def test_checkpoint_pool_keeps_the_last_k_and_draws_uniformly(tiny_model):
    adapter = load(str(tiny_model("sd15")))
    adapter.add_lora(rank=2)
    pool = CheckpointPool(adapter, every=2, size=3)
    pool.start()
    for step in range(1, 9):
        pool.after_update(step)  # saves at 2, 4, 6, 8
    assert pool.names == ["pool/2", "pool/3", "pool/4"]
    assert sorted(n for n in adapter.snapshot_names if n.startswith("pool/")) == pool.names
    g = torch.Generator().manual_seed(0)
    counts = {n: 0 for n in pool.names}
    for _ in range(300):
        counts[pool.draw(g)] += 1
    assert all(70 < c < 130 for c in counts.values()), counts
    held = pool.held
    pool.add()
    pool.add()
    pool.add()  # every kept name moved on; the held one stays loaded until the next draw
    assert held not in pool.names and held in adapter.snapshot_names
    pool.draw(g)
    assert held not in adapter.snapshot_names
    with pytest.raises(ConfigError, match="size must be positive"):
        CheckpointPool(adapter, every=1, size=0)


# ------------------------------------------------------------------------------------------------- DRO
@pytest.mark.parametrize("kind", ["sd15", "sd2", "sd3"])
def test_dro_loss_matches_float64_formula(tiny_model, tmp_path, kind):
    perturb = kind != "sd3"  # the flow family has one shared schedule
    trainer = winners_trainer(tiny_model, kind, "dro", tmp_path / "run", dro={"margin": 0.01, "perturb_timesteps": perturb})
    adapter, algorithm = trainer.adapter, trainer.algorithm
    perturb_lora(trainer, 0.1)  # the sampler snapshot (taken at setup) stays the base
    batch = trainer.collect(0)
    micro = next(iter(algorithm.micro_batches(batch, 0, 0)))
    loss, stats = algorithm.loss(micro)
    _, t, noise = micro
    cond = batch.conditioning["cond"]
    # the replayed steps are the lagged sampler's: its own prediction at the stored x_t
    with adapter.snapshot("dro/sampler"):
        own = adapter.predict(batch.extras["own_x_t"], t, {"cond": cond, "uncond": None})
    torch.testing.assert_close(batch.extras["own_prediction"], own.float(), atol=1e-5, rtol=0)
    x_t, target = noised_and_target(adapter, batch.latents, noise, t)
    e_expert, r_expert = errors64(adapter, x_t, t, cond, target), errors64(adapter, x_t, t, cond, target, adapter.reference())
    own_x_t, own_target = batch.extras["own_x_t"].double(), batch.extras["own_prediction"].double()
    e_own = errors64(adapter, own_x_t, t, cond, own_target)
    r_own = errors64(adapter, own_x_t, t, cond, own_target, adapter.reference())
    diff = (e_expert - r_expert) - (e_own - r_own)
    expected = torch.clamp(diff + 0.01, min=0).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)
    assert stats["hinge_active"].item() == pytest.approx((diff + 0.01 > 0).double().mean().item())
    if perturb:  # sample-wise timesteps: not all on the shared schedule
        shared = set(adapter._schedule(3)["timesteps"].tolist())
        assert any(int(v) not in shared for v in t.tolist())


def test_dro_hinge_is_flat_once_the_margin_is_met():
    expert = torch.tensor([0.10, 0.50], requires_grad=True)
    own = torch.tensor([0.90, 0.10], requires_grad=True)
    ref = torch.tensor([0.20, 0.20])
    losses, diff = dro_hinge_loss(expert, ref, own, ref, margin=0.05)
    assert diff.tolist() == pytest.approx([-0.8, 0.4])
    losses.mean().backward()
    assert losses[0].item() == 0.0 and losses[1].item() == pytest.approx(0.45)
    assert expert.grad.tolist() == [0.0, 0.5] and own.grad.tolist() == [0.0, -0.5]


@pytest.mark.parametrize("met", [True, False])
def test_dro_no_gradient_through_the_model_once_the_margin_is_met(tiny_model, tmp_path, met):
    """Targets of the own samples placed far beyond (or before) the policy: ``e_φ^π - e_ref^π`` is then
    ``±(1+2c)·||f_φ - f_ref||²``, which decides the ranking whatever the expert branch gives."""
    trainer = winners_trainer(tiny_model, "sd15", "dro", tmp_path / "run", dro={"perturb_timesteps": False})
    adapter, algorithm = trainer.adapter, trainer.algorithm
    perturb_lora(trainer, 0.3)
    batch = trainer.collect(0)
    cond = {"cond": batch.conditioning["cond"], "uncond": None}
    t = batch.extras["timestep"].long()
    with torch.no_grad():
        f_policy = adapter.predict(batch.extras["own_x_t"], t, cond)
        with adapter.reference():
            f_ref = adapter.predict(batch.extras["own_x_t"], t, cond)
    c = 50.0
    batch.extras["own_prediction"] = (f_ref + c * (f_ref - f_policy)) if met else (f_policy + c * (f_policy - f_ref))
    loss, stats = algorithm.loss(next(iter(algorithm.micro_batches(batch, 0, 0))))
    loss.backward()
    grads = [p.grad for p in trainer.params if p.grad is not None]
    if met:
        assert loss.item() == 0.0 and stats["hinge_active"].item() == 0.0
        assert all(g.abs().max() == 0 for g in grads)
    else:
        assert loss.item() > 0 and stats["hinge_active"].item() == 1.0
        assert any(g.abs().max() > 0 for g in grads)


def test_dro_with_a_fresh_sampler_fits_the_experts_only_where_the_hinge_is_active(tiny_model, tmp_path):
    """The official sync (sampler = current weights, buffer = the newest trajectories): the own branch's
    error ``||f_φ(x^π) - f^π||²`` is zero with zero gradient, so the DRO gradient is the expert branch's
    ``∇ mean_i 1[diff_i + m > 0]·e_φ(x_t^E)`` and the own samples act only through the gate."""
    trainer = winners_trainer(tiny_model, "sd15", "dro", tmp_path / "run", dro={"perturb_timesteps": False, "margin": 0.01})
    adapter, algorithm = trainer.adapter, trainer.algorithm
    perturb_lora(trainer, 0.1)
    adapter.save_snapshot("dro/sampler")  # what after_update does with buffer_update_steps = 1
    batch = trainer.collect(0)
    micro = next(iter(algorithm.micro_batches(batch, 0, 0)))
    loss, stats = algorithm.loss(micro)
    assert 0 < stats["hinge_active"].item() and stats["own_gap"].item() < 0  # e_φ^π = 0 < e_ref^π
    grads = torch.autograd.grad(loss, trainer.params, allow_unused=True)

    _, t, noise = micro
    cond = {"cond": batch.conditioning["cond"], "uncond": None}
    x0 = batch.latents.float()
    x_t, target = adapter.add_noise(x0, noise, t.long()), adapter.training_target(x0, noise, t.long())
    own = adapter.predict(batch.extras["own_x_t"], t.long(), cond)
    assert ((own - batch.extras["own_prediction"]) ** 2).flatten(1).mean(1).max() < 1e-10
    e_expert = ((adapter.predict(x_t, t.long(), cond) - target) ** 2).flatten(1).mean(1)
    with torch.no_grad(), adapter.reference():
        r_expert = ((adapter.predict(x_t, t.long(), cond) - target) ** 2).flatten(1).mean(1)
        r_own = ((adapter.predict(batch.extras["own_x_t"], t.long(), cond) - batch.extras["own_prediction"]) ** 2).flatten(1).mean(1)
    active = ((e_expert.detach() - r_expert) + r_own + 0.01 > 0).float()
    assert active.mean().item() == pytest.approx(stats["hinge_active"].item())
    expected = torch.autograd.grad((active * e_expert).mean(), trainer.params, allow_unused=True)
    used = [(g, e) for g, e in zip(grads, expected) if e is not None]
    assert used and any(e.abs().max() > 0 for _, e in used)
    for g, e in used:  # float32 round-off of two batch layouts
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4 * e.abs().max().item())


def test_dro_checks_its_settings(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="dro.buffer_size = 6 must be a positive multiple"):
        winners_trainer(tiny_model, "sd15", "dro", tmp_path / "a", dro={"buffer_size": 6})
    with pytest.raises(ConfigError, match="dro.perturb_timesteps = true needs a DDIM family"):
        winners_trainer(tiny_model, "sd3", "dro", tmp_path / "b")
    with pytest.raises(ConfigError, match="seppo.flipper"):
        winners_trainer(tiny_model, "sd15", "seppo", tmp_path / "c", seppo={"flipper": "maybe"})


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("algorithm", ["seppo", "dro"])
def test_resume_matches_the_uninterrupted_run(tiny_model, tmp_path, algorithm):
    """The checkpoint after epoch 2 holds the pool (two snapshots, one rotated out) or the replay buffer
    (two generations); epoch 3 resumed ends bit-identical, pool and buffer included."""
    data = {"source": str(write_winners(tmp_path / "data", 16, kind="winners" if algorithm == "seppo" else "experts")),
            "prompt_dropout": 0.3, "cache_latents": True}
    extra = ({"seppo": {"pool_every": 1, "pool_size": 2, "sample_guidance_scale": 2.0}} if algorithm == "seppo" else
             {"dro": {"buffer_size": 8, "buffer_update_steps": 2}})
    sections = {"run": {"epochs": 3, "checkpoint_every": 2, "keep_checkpoints": 1}, "train": {"ema": True, "ema_every": 1},
                **extra}

    def make(folder):
        trainer = winners_trainer(tiny_model, "sd15", algorithm, tmp_path / folder, data=data, **sections)
        return trainer

    straight = make("straight")
    straight.train()
    first = make("resumed")
    first.train(stop_after=2)
    del first
    second = make("resumed")
    second.resume()
    assert second.epoch == 2
    if algorithm == "seppo":
        assert second.algorithm.pool.names == ["seppo/pool/1", "seppo/pool/2"]
    else:
        assert len(second.algorithm.buffer) == 2
    second.train()
    a, b = straight.trainable_state_dict(), second.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h.get("loss") for h in straight.history] == [h.get("loss") for h in second.history]
    assert straight.adapter.snapshot_names == second.adapter.snapshot_names
    for name in straight.adapter.snapshot_names:
        sa, sb = straight.adapter.snapshot_weights(name), second.adapter.snapshot_weights(name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    sa, sb = straight.algorithm.state_dict(), second.algorithm.state_dict()
    if algorithm == "seppo":
        assert sa["pool"] == sb["pool"]
    else:
        ga, gb = sa["buffer"]["generations"], sb["buffer"]["generations"]
        assert len(ga) == len(gb) == 2
        for x, y in zip(ga, gb):
            assert x["prompts"] == y["prompts"]
            for key in ("expert", "x_t", "prediction", "timesteps"):
                assert torch.equal(x[key], y[key]), key
            assert all(torch.equal(x["cond"][k], y["cond"][k]) for k in x["cond"])


# ---------------------------------------------------------------------------------------------- adapter
def test_sample_per_sample_timesteps_and_predictions(tiny_model):
    adapter = load(str(tiny_model("sd15")))
    prompts = ["a red square", "a blue circle"]
    latents = adapter.prepare_latents(2, torch.Generator().manual_seed(1))
    plain = adapter.sample(prompts, steps=4, latents=latents, decode=False)
    assert "predictions" not in plain.extras and "sample_timesteps" not in plain.extras
    shared = plain.timesteps[None].expand(2, -1)
    same = adapter.sample(prompts, steps=4, latents=latents, decode=False, timesteps=shared, return_predictions=True)
    torch.testing.assert_close(same.latents, plain.latents, atol=1e-6, rtol=0)  # the shared schedule row by row
    cond = adapter.encode_prompts(prompts, do_cfg=False)
    for i in range(4):
        torch.testing.assert_close(same.extras["predictions"][:, i], adapter.predict(same.latents[:, i], shared[:, i], cond))
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    rows = adapter.stride_perturbed_timesteps(4, gens)
    stride = adapter.num_train_timesteps // 4
    assert ((shared - rows >= 0) & (shared - rows < stride)).all() and not torch.equal(rows, shared)
    jittered = adapter.sample(prompts, steps=4, latents=latents, decode=False, timesteps=rows)
    for b in range(2):  # each sample follows its own row, whatever the batch
        alone = adapter.sample(prompts[b:b + 1], steps=4, latents=latents[b:b + 1], decode=False, timesteps=rows[b:b + 1])
        torch.testing.assert_close(jittered.latents[b], alone.latents[0], atol=1e-5, rtol=0)
    assert torch.equal(jittered[1:].extras["sample_timesteps"], rows[1:])
    with pytest.raises(AdapterError, match="decrease strictly"):
        adapter.sample(prompts, steps=4, latents=latents, timesteps=rows.flip(1))
    with pytest.raises(AdapterError, match="2x4 integer tensor"):
        adapter.sample(prompts, steps=4, latents=latents, timesteps=rows[:, :3])
    with pytest.raises(AdapterError, match="per-sample timesteps"):
        load(str(tiny_model("sd3"))).sample(prompts, steps=4, timesteps=rows)


# dro_shapes does not rise yet (256 held-out prompts, seeds 0 and 1: +0.016 +- 0.010 with the official sync, the
# best of the settings in its header), so only SePPO's rise is asserted.
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DIFFALIGN_EXTRA_RISE") != "1",
                    reason="about 8 worker-minutes, over CI's 45-minute budget: DIFFALIGN_EXTRA_RISE=1 runs it")
def test_seppo_on_rendered_winners_raises_held_out_judge_score(tmp_path, shapes_rise):
    """ShapesWorld: SePPO on winners only (each caption's rendered ground truth, ``prefs experts``) raises the
    judge's score on 256 held-out prompts (the paired two-seed test of ``tests/shapes_rise.py``)."""
    data = shapes_rise.expert_data() / "experts.jsonl"
    shapes_rise.assert_rises("seppo_shapes", [f"data.source={data}"], tmp_path)
