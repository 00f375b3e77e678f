"""Diffusion-DPO (Wallace et al., 2023, arXiv 2311.12908).

DPO with the ELBO standing in for the image log-likelihood. For a pair ``(c, x0^w, x0^l)`` the same
timestep ``t`` and noise ``ε`` noise both images, ``e(x) = mean_d ||target - f(x_t, t, c)||²`` is the
denoising error in the model's own prediction space (ε, v or flow velocity), and

``inside = -(β/2)·[(e_θ(x^w) - e_ref(x^w)) - (e_θ(x^l) - e_ref(x^l))]``,
``L = -mean log σ(inside)``,

as the official code writes the paper's ``-log σ(-β T ω(λ_t) [...])`` (``T ω(λ_t)`` absorbed into β, a mean
rather than a sum over dims). With policy = reference, ``L = log 2``. ``sft = true`` trains the plain
denoising loss on the preferred image only (the official ``--sft``); ``winner_weight = λ₁ > 0`` adds it to the
DPO loss, ``L = L_DPO + λ₁·mean e_θ(x^w)`` (Dual-IPO's ``λ1·E[-log p_θ(y^w|x)]`` term, the ELBO standing in for
the likelihood as above; RPO's "DPO + NLL on the chosen"). Logged: implicit accuracy
``mean(inside > 0) + ½·mean(inside = 0)``, and the policy and reference errors of both images.
The reference is the frozen base (LoRA disabled, or the snapshot taken before full fine-tuning), or a named
snapshot when another algorithm sets one (IPO: the round's starting model).
Deliberate difference: the official code asserts epsilon prediction; the loss here is the same on v and
flow targets (the error is taken in whatever space the model predicts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffalign.config import ConfigError, register_section

from .base import denoising_errors, register_algorithm
from .preference import PreferenceAlgorithm, pair_layout, split_pairs


@register_section("dpo")
@dataclass
class DPOConfig:
    #: official SD 1.5 / SDXL launchers: 5000
    beta: float = 5000.0
    #: train the denoising loss on the preferred image only (no reference)
    sft: bool = False
    #: λ₁ of ``L_DPO + λ₁·mean e_θ(x^w)``: the preferred image's denoising loss beside DPO (0: plain DPO; unverified)
    winner_weight: float = 0.0


def dpo_loss(policy_w, policy_l, ref_w, ref_l, beta: float, scale: torch.Tensor | float = 1.0):
    """``-log σ(-(β/2)·scale·[(e_θ^w - e_ref^w) - (e_θ^l - e_ref^l)])`` per pair, and the inside term.
    ``scale`` is SmPO's per-pair factor (1 for Diffusion-DPO)."""
    inside = -0.5 * beta * scale * ((policy_w - ref_w) - (policy_l - ref_l))
    return -F.logsigmoid(inside), inside


def implicit_accuracy(inside: torch.Tensor) -> torch.Tensor:
    return (inside > 0).double().mean() + 0.5 * (inside == 0).double().mean()


def pair_error_stats(errors, inside: torch.Tensor) -> dict[str, torch.Tensor]:
    policy_w, policy_l = split_pairs(errors.policy.detach())
    ref_w, ref_l = split_pairs(errors.reference)
    return {
        "implicit_acc": implicit_accuracy(inside.detach()).float(),
        "policy_err_preferred": policy_w.mean().float(), "policy_err_rejected": policy_l.mean().float(),
        "ref_err_preferred": ref_w.mean().float(), "ref_err_rejected": ref_l.mean().float(),
    }


@register_algorithm
class DiffusionDPO(PreferenceAlgorithm):
    name = "dpo"
    config_class = DPOConfig
    data_kind = "pairs"

    def validate(self) -> None:
        super().validate()
        if not self.cfg.beta > 0:
            raise ConfigError(f"dpo.beta must be positive, got {self.cfg.beta}")
        if self.cfg.winner_weight < 0:  # NaN and infinity are refused as the config loads
            raise ConfigError(f"dpo.winner_weight must be a finite number >= 0, got {self.cfg.winner_weight}")
        if self.cfg.sft and self.cfg.winner_weight:
            raise ConfigError("dpo.sft trains the preferred image's loss alone: set dpo.winner_weight = 0 with it")

    def loss(self, micro):
        batch, t, noise = micro
        x0 = pair_layout(batch.latents).float()
        errors = denoising_errors(self.adapter, x0, torch.cat([noise, noise]).to(x0), torch.cat([t, t]),
                                  self.paired_conditioning(batch), reference=None if self.cfg.sft else self.reference)
        if self.cfg.sft:
            policy_w, _ = split_pairs(errors.policy)
            return policy_w.mean().float(), {"policy_err_preferred": policy_w.detach().mean().float()}
        policy_w, policy_l = split_pairs(errors.policy)
        ref_w, ref_l = split_pairs(errors.reference)
        losses, inside = dpo_loss(policy_w, policy_l, ref_w, ref_l, self.cfg.beta)
        loss, stats = losses.mean().float(), pair_error_stats(errors, inside)
        if self.cfg.winner_weight:
            stats["dpo_loss"] = loss.detach()
            loss = loss + self.cfg.winner_weight * policy_w.mean().float()
        return loss, stats
