"""Algorithm math against reference formulas, on-policy invariants, and every algorithm on both families."""
from __future__ import annotations

import math

import pytest
import torch

from diffalign.training.algorithms.awm import GHUBER_EPS, awm_log_likelihood, stratified_indices
from diffalign.training.algorithms.base import clipped_policy_loss
from tests.test_trainer import make_trainer, trainable


# ---------------------------------------------------------------------------------- pure math
def test_clipped_policy_loss_matches_ppo_formula():
    logp = torch.tensor([0.0, 0.2, -0.3, 0.05], requires_grad=True)
    old = torch.tensor([0.0, 0.0, 0.0, 0.0])
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0])
    eps = 0.1
    loss, stats = clipped_policy_loss(logp, old, adv, eps)
    r = torch.exp(logp.detach())
    expected = torch.maximum(-adv * r, -adv * r.clamp(1 - eps, 1 + eps)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(stats["approx_kl"], 0.5 * (logp.detach() ** 2).mean())
    assert stats["clipfrac"].item() == 0.5  # samples 1 and 2 leave the band
    loss.backward()
    # sample 1 (A>0, r>1+eps) and sample 2 (A<0, r<1-eps) are clipped: no gradient
    assert logp.grad[1] == 0 and logp.grad[2] == 0
    torch.testing.assert_close(logp.grad[[0, 3]], (-adv * r)[[0, 3]] / 4)


def test_awm_weightings_match_formulas():
    m = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    p = 0.25
    torch.testing.assert_close(awm_log_likelihood(m, t, "uniform"), -m)
    torch.testing.assert_close(awm_log_likelihood(m, t, "t"), -t * m)
    torch.testing.assert_close(awm_log_likelihood(m, t, "t2"), -t * t * m)
    torch.testing.assert_close(awm_log_likelihood(m, t, "ghuber", p),
                               -t * ((m + GHUBER_EPS) ** p - GHUBER_EPS**p) / p)
    torch.testing.assert_close(awm_log_likelihood(m, t, "huber"), -t * (torch.sqrt(m + GHUBER_EPS) - GHUBER_EPS**0.5))
    assert awm_log_likelihood(m, t, "ghuber").dtype == torch.float64
    # the 1e-10 inside the power keeps the gradient finite at m = 0
    m0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    awm_log_likelihood(m0, torch.ones(1, dtype=torch.float64), "ghuber", p).sum().backward()
    assert torch.isfinite(m0.grad).all()
    with pytest.raises(ValueError, match="unknown AWM weighting"):
        awm_log_likelihood(m, t, "cubic")


def test_awm_policy_term_is_the_on_policy_ratio_gradient():
    """``-mean(A·ℓ)`` has the gradient of PPO's form with ``r = exp(ℓ - sg(ℓ)) ≡ 1`` and clip range 1."""
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([0.5, -1.0, 0.2, 1.0, -0.3], dtype=torch.float64)
    ell = -(theta**2) * torch.linspace(0.2, 1.0, 5, dtype=torch.float64)
    (g_direct,) = torch.autograd.grad(-(adv * ell).mean(), theta, retain_graph=True)
    ratio = torch.exp(ell - ell.detach())
    assert torch.equal(ratio.detach(), torch.ones(5, dtype=torch.float64))
    ppo = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.0, 2.0)).mean()
    (g_ppo,) = torch.autograd.grad(ppo, theta)
    torch.testing.assert_close(g_direct, g_ppo)


def test_stratified_indices_one_per_stratum_and_skip_pure_noise():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = stratified_indices(6, 12, gen)  # official: 14 steps x 0.9 -> 12
        assert idx.tolist() == sorted(idx.tolist()) and idx.min() >= 1 and idx.max() <= 11
        bounds = torch.linspace(1, 12, 7).long()
        assert all(bounds[k] <= idx[k] < max(bounds[k + 1], bounds[k] + 1) for k in range(6))


# ------------------------------------------------------------------------ adapters, both families
@pytest.mark.parametrize("algorithm", ["ddpo", "flow_grpo"])
@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_importance_ratio_is_one_before_the_first_update(tiny_model, tmp_path, algorithm, kind):
    trainer = make_trainer(tiny_model, kind, algorithm, tmp_path, sampling={"guidance_scale": 2.0},
                           flow_grpo={"kl_beta": 0.04})
    batch = trainer.collect(epoch=0)
    micro = list(trainer.algorithm.micro_batches(batch[0:2], 0, 0))
    for unit in micro:
        loss, stats = trainer.algorithm.loss(unit)
        assert abs(stats["ratio"].item() - 1) < 1e-6 and stats["clipfrac"].item() == 0
        assert stats["approx_kl"].item() < 1e-12
        if "kl" in stats:
            assert stats["kl"].item() < 1e-10  # LoRA starts at zero: policy == reference (up to round-off)
    with torch.no_grad():
        for step in range(batch.num_steps):
            rescored = trainer.adapter.step_log_prob(batch, step)
            assert (rescored - batch.log_probs[:, step]).abs().max() < 1e-5


@pytest.mark.parametrize("algorithm", ["ddpo", "flow_grpo", "awm"])
@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_every_algorithm_trains_on_both_families(tiny_model, tmp_path, algorithm, kind):
    trainer = make_trainer(tiny_model, kind, algorithm, tmp_path, run={"epochs": 1, "checkpoint_every": 0}, sensitive=False,
                           sampling={"guidance_scale": 2.0} if algorithm != "awm" else {})
    before = trainable(trainer)
    trainer.train()
    after = trainable(trainer)
    row = [h for h in trainer.history if "loss" in h][-1]
    assert math.isfinite(row["loss"]) and row["skipped_steps"] == 0
    assert trainer.global_step == 1
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_flow_grpo_kl_matches_gaussian_mean_formula(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model, "sd3", "flow_grpo", tmp_path, flow_grpo={"kl_beta": 1.0})
    with torch.no_grad():
        for name, p in trainer.adapter.trainable_denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = trainer.collect(epoch=0)
    _, stats = trainer.algorithm.loss((batch, 0))
    with torch.no_grad():
        _, mean, std = trainer.adapter.step_log_prob(batch, 0, return_mean=True)
        with trainer.adapter.reference():
            _, ref_mean, _ = trainer.adapter.step_log_prob(batch, 0, return_mean=True)
    dt = batch.sigmas[0] - batch.sigmas[1]
    unit_std = std / dt.sqrt()  # the official per-unit-time std
    expected = ((mean - ref_mean) ** 2 / (2 * unit_std**2)).flatten(1).mean(1).mean()
    assert stats["kl"].item() > 0
    torch.testing.assert_close(stats["kl"], expected, rtol=1e-4, atol=1e-8)


def test_awm_ema_snapshot(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model, "sd3", "awm", tmp_path, sampling={"stochastic": False},
                           awm={"ema_decay_max": 0.3, "ema_decay_rate": 0.1})
    adapter = trainer.adapter
    params = adapter.trainable_named_parameters()
    ema = adapter.snapshot_weights("ema")
    assert set(ema) == set(params) == set(trainer.param_names)  # the snapshot is no parameter of the optimizer
    assert all(torch.equal(ema[n], params[n]) for n in params)  # starts as a copy
    trainer.train(epochs=1)
    ema_before = {n: e.clone() for n, e in ema.items()}
    with torch.no_grad():
        for p in params.values():
            p.add_(1.0)
    trainer.algorithm.after_epoch(1, global_step=2)  # d = min(0.3, 0.1 * 2) = 0.2
    for n, p in params.items():
        torch.testing.assert_close(ema[n], 0.2 * ema_before[n] + 0.8 * p)
    assert all(p.requires_grad for p in params.values())


@pytest.mark.parametrize("algorithm", ["ddpo", "flow_grpo", "awm"])
def test_timestep_fraction_is_validated_by_every_algorithm(algorithm):
    from diffalign.config import ConfigError, load_config
    from diffalign.training.algorithms import ALGORITHMS
    from tests.test_trainer import base_config

    stochastic = {"stochastic": algorithm != "awm"}
    cls = ALGORITHMS.get(algorithm)
    with pytest.raises(ConfigError, match=rf"{algorithm}.timestep_fraction must be in \(0, 1\], got 1.5"):
        cls(load_config(base_config(algorithm, "unused", sampling=stochastic, **{algorithm: {"timestep_fraction": 1.5}})))
    with pytest.raises(ConfigError, match=rf"int\(3 steps x {algorithm}.timestep_fraction\) = 0"):
        cls(load_config(base_config(algorithm, "unused", sampling=stochastic, **{algorithm: {"timestep_fraction": 0.1}})))
    assert cls(load_config(base_config(algorithm, "unused", sampling={**stochastic, "steps": 10},
                                       **{algorithm: {"timestep_fraction": 0.5}}))).steps_from_fraction() == 5


# ------------------------------------------------------------ SDE window, shared latents, last step
@pytest.mark.parametrize("algorithm", ["ddpo", "flow_grpo"])
@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_sde_window_trains_exactly_the_window_steps(tiny_model, tmp_path, algorithm, kind):
    trainer = make_trainer(tiny_model, kind, algorithm, tmp_path, run={"epochs": 1, "checkpoint_every": 0},
                           sampling={"steps": 5, "sde_window": 2, "sde_window_range": [0, 4]})
    assert trainer.grad_accum == 2 * 2  # 2 train batches x 2 window steps, one update per epoch
    from diffalign.training.online import sde_window

    windows = {sde_window(trainer.config, epoch) for epoch in range(12)}
    assert windows == {(0, 2), (1, 3), (2, 4)}  # every placement inside the range, drawn per epoch
    assert sde_window(trainer.config, 3) == sde_window(trainer.config, 3)
    batch = trainer.collect(epoch=0)
    start, end = sde_window(trainer.config, 0)
    assert batch.sampler["sde_window"] == [start, end]
    outside = [i for i in range(5) if not start <= i < end]
    assert (batch.log_probs[:, outside] == 0).all()
    trained = []
    for unit in trainer.algorithm.micro_batches(batch, 0, 0):
        step = unit[1]
        trained.append(step.tolist() if torch.is_tensor(step) else [step] * batch.batch_size)
        _, stats = trainer.algorithm.loss(unit)
        assert abs(stats["ratio"].item() - 1) < 1e-6 and stats["clipfrac"].item() == 0  # on-policy
    per_sample = torch.tensor(trained).T  # samples x micro-steps
    assert all(sorted(row.tolist()) == list(range(start, end)) for row in per_sample)
    before = trainable(trainer)
    trainer.train()
    assert trainer.global_step == 1 and any(not torch.equal(before[k], v) for k, v in trainable(trainer).items())


def test_same_latent_shares_the_initial_noise_of_a_group_only(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model, "sd15", "flow_grpo", tmp_path,
                           sampling={"batch_size": 8, "group_size": 4, "same_latent": True})
    batch = trainer.collect(epoch=0)
    first = batch.latents[:, 0].flatten(1)
    groups = {}
    for i, prompt in enumerate(batch.prompts):
        groups.setdefault(prompt, []).append(i)
    assert len(groups) == 2 and all(len(members) == 4 for members in groups.values())
    (a, *rest_a), (b, *_) = groups.values()
    for i in rest_a:
        torch.testing.assert_close(first[i], first[a], rtol=0, atol=0)
        assert not torch.equal(batch.latents[i, -1], batch.latents[a, -1])  # the steps' noise still differs
    assert not torch.equal(first[a], first[b])
    # a new epoch draws new initial noise
    assert not torch.equal(trainer.collect(epoch=1).latents[:, 0].flatten(1)[0], first[a])


def test_ddpo_skip_last_step_never_trains_the_last_transition(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model, "sd15", "ddpo", tmp_path, sampling={"steps": 5},
                           ddpo={"skip_last_step": True, "timestep_fraction": 0.5})
    assert trainer.algorithm.num_train_timesteps() == 2  # int((5 - 1) x 0.5)
    batch = trainer.collect(epoch=0)
    seen = torch.cat([steps for _, steps in trainer.algorithm.micro_batches(batch, 0, 0)])
    assert len(seen) == 2 * batch.batch_size and seen.max() < 4 and len(set(seen.tolist())) > 1


def test_sde_window_and_same_latent_settings_are_validated():
    from diffalign.config import ConfigError, load_config
    from tests.test_trainer import base_config

    with pytest.raises(ConfigError, match="sampling.sde_window needs sampling.stochastic = true"):
        load_config(base_config("awm", "unused", sampling={"stochastic": False, "sde_window": 1}))
    with pytest.raises(ConfigError, match="does not fit sampling.sde_window_range"):
        load_config(base_config("ddpo", "unused", sampling={"steps": 10, "sde_window": 3, "sde_window_range": [4, 6]}))
    with pytest.raises(ConfigError, match=r"sampling.sde_window_range must be \[lo, hi\]"):
        load_config(base_config("ddpo", "unused", sampling={"sde_window_range": [1]}))
    with pytest.raises(ConfigError, match="sampling.same_latent needs sampling.stochastic"):
        load_config(base_config("awm", "unused", sampling={"stochastic": False, "same_latent": True}))
    assert load_config(base_config("ddpo", "unused", sampling={"steps": 10, "sde_window": 3})).sampling.window_range() == (0, 5)
    # a window longer than half the schedule still fits by default (the shapes recipes on 3-step test runs)
    assert load_config(base_config("ddpo", "unused", sampling={"steps": 3, "sde_window": 3})).sampling.window_range() == (0, 3)
    with pytest.raises(ConfigError, match="does not fit"):
        load_config(base_config("ddpo", "unused", sampling={"steps": 3, "sde_window": 4}))
