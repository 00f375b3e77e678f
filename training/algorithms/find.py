"""FIND — Fine-tuning the Initial Noise Distribution (the FIND paper, arXiv 2407.19453).

The diffusion model stays frozen (bit-identical); what is trained is the law of the initial noise,

``π_θ(z | c) = N(μ_θ(c), diag σ_θ(c)²)`` over the latent shape (image ``C×h×w`` or video latents),

sampled as ``z = μ + σ ⊙ ε`` with ``ε`` the model's own initial noise. ``μ, σ`` are either one pair shared by
all prompts (``find.per_prompt = false``, as released: initialised to 0 and 1) or made per prompt from the
pooled prompt embedding ``e(c)`` by a small network, ``μ(c) = μ₀ + U·h(e)``, ``σ(c) = σ₀ ⊙ exp(W·h(e))``
with ``h`` a two-layer MLP to ``find.rank`` features and ``U, W`` initialised to 0 (so it starts shared).
``σ`` is clamped from below by ``find.sigma_min`` (after every optimizer step and in the forward pass).

The whole denoising chain is a one-step MDP (action ``z``, reward ``r`` of the decoded image). Per sample:

* ``log π_θ(z) = mean_d log N(z_d; μ_d, σ_d²)`` (mean over latent elements, as released);
* advantage ``A = r - V(μ, σ, e)`` with the current sample's own reward (the released code reads the
  buffer's entry 0 instead, a defect not copied), or ``A = r`` with ``find.value = false``;
* ratio ``ρ = exp(log π_θ(z) - log π_anchor(z))``, hard-clamped ``ρ̄ = clamp(ρ, 1-ε, 1+ε)`` (not PPO's
  min/max: the gradient is zero outside the band whatever the sign of ``A``); the anchor is
  ``find.anchor = "initial"``, ``N(0, I)`` (the released behaviour, whose old parameters are never
  refreshed), or ``"previous"``, the iterate that drew ``z`` (PPO's old policy);
* ``L = -λ_r · A · ρ̄ + λ_KL · mean_d[(μ - 0)² + (σ - 1)²]`` (the "KL" is a squared distance to the
  standard normal's parameters), averaged over the batch; ``λ_r = find.reward_weight``,
  ``λ_KL = find.kl_weight``.

The value (calibration) network ``V(μ, σ, e)`` sees ``μ`` and ``σ`` average-pooled to ``find.value_bins``
numbers each and the pooled prompt embedding; it is trained by MSE to the observed rewards on a buffer of
the last ``find.value_buffer_size`` samples, ``find.value_steps`` Adam steps at ``find.value_learning_rate``
per epoch, after collection and before the policy update. The loop's optimizer steps every trainable at
once, so it cannot take several value steps per policy step: the value network therefore has this
algorithm's own optimizer (checkpointed in its state) and is not a parameter group; only the noise
distribution is (``noise``, saved as ``final/noise.safetensors``).

The learned law is installed on the adapter (``adapter.noise_policy``), so every ``adapter.sample`` call that
draws its own initial noise samples from it: the trainer's held-out evaluation, the demo, and
``diffalign sample|eval --noise-policy DIR`` (or ``--run`` of a FIND run) through
:data:`diffalign.trained.NON_DENOISER_LOADERS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffalign.config import ConfigError, register_section

from .base import Algorithm, ParamGroup, mean_over_sample, register_algorithm

__all__ = ["FIND", "FINDConfig", "NoisePolicy", "ValueNetwork", "check_noise_policy", "find_loss", "gaussian_log_prob",
           "load_noise_policy",
           "prompt_embedding"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``mean_d log N(z_d; μ_d, σ_d²)`` per sample -> ``[B]``."""
    z, mu, sigma = z.float(), mu.float(), sigma.float()
    return mean_over_sample(-((z - mu) ** 2) / (2 * sigma**2) - torch.log(sigma) - _HALF_LOG_2PI)


def prompt_embedding(conditioning: Mapping[str, Any]) -> torch.Tensor:
    """The prompt's text embedding pooled over tokens (``cond["prompt_embeds"]``, ``B×L×D`` -> ``B×D``)."""
    embeds = conditioning["cond"]["prompt_embeds"]
    return (embeds.mean(dim=1) if embeds.ndim == 3 else embeds).float()


class NoisePolicy(nn.Module):
    """``N(μ(c), diag σ(c)²)`` over one latent shape; see the module docstring for the per-prompt form."""

    def __init__(self, latent_shape: Sequence[int], *, embed_dim: int | None = None, rank: int = 8, hidden: int = 64,
                 sigma_min: float = 1e-4):
        super().__init__()
        self.latent_shape = tuple(int(d) for d in latent_shape)
        numel = math.prod(self.latent_shape)
        self.mu = nn.Parameter(torch.zeros(self.latent_shape))
        self.sigma = nn.Parameter(torch.ones(self.latent_shape))
        # kept with the weights so a saved policy clamps as it was trained; never optimised
        self.sigma_min = nn.Parameter(torch.tensor(float(sigma_min)), requires_grad=False)
        self.encoder: nn.Module | None = None
        if embed_dim is not None:
            self.encoder = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, rank))
            self.mu_basis = nn.Parameter(torch.zeros(rank, numel))
            self.log_sigma_basis = nn.Parameter(torch.zeros(rank, numel))

    @property
    def per_prompt(self) -> bool:
        return self.encoder is not None

    def distribution(self, embedding: torch.Tensor | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, σ)``, each ``B×latent_shape`` (σ clamped from below)."""
        shape = (batch_size, *self.latent_shape)
        mu, sigma = self.mu.expand(shape), self.sigma.expand(shape)
        if self.encoder is not None:
            if embedding is None:
                raise ValueError("a per-prompt noise policy needs the prompt embedding")
            h = self.encoder(embedding.to(self.mu.device, self.mu.dtype))
            mu = mu + (h @ self.mu_basis).view(shape)
            sigma = sigma * torch.exp(h @ self.log_sigma_basis).view(shape)
        return mu, sigma.clamp_min(float(self.sigma_min))

    def log_prob(self, z: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        mu, sigma = self.distribution(embedding, z.shape[0])
        return gaussian_log_prob(z, mu, sigma)

    def sample_from(self, eps: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        """``z = μ + σ ⊙ ε`` for standard noise ``ε`` (``B×latent_shape``)."""
        if tuple(eps.shape[1:]) != self.latent_shape:
            raise ValueError(f"the noise policy is for latents of shape {self.latent_shape}, but the model draws "
                             f"{tuple(eps.shape[1:])} (another model or another height/width/num_frames)")
        mu, sigma = self.distribution(embedding, eps.shape[0])
        return (mu + sigma * eps.to(mu.device, mu.dtype)).to(eps.dtype)

    def transform(self, eps: torch.Tensor, conditioning: Mapping[str, Any]) -> torch.Tensor:
        """The adapter hook: its initial noise -> a draw from this law (no gradient)."""
        with torch.no_grad():
            embedding = prompt_embedding(conditioning) if self.per_prompt else None
            return self.sample_from(eps, embedding)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.sigma.clamp_(min=float(self.sigma_min))

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> "NoisePolicy":
        """The policy a ``noise.safetensors`` file holds (architecture read from the names and shapes)."""
        missing = [k for k in ("mu", "sigma") if k not in tensors]
        if missing:
            raise ValueError(f"not a noise policy: no {', '.join(missing)} tensor (holds {', '.join(sorted(tensors)) or 'nothing'})")
        mu, sigma = tensors["mu"], tensors["sigma"]
        if mu.shape != sigma.shape or mu.ndim < 1:
            raise ValueError(f"noise policy mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} must have one latent shape")
        if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all() and (sigma > 0).all()):
            raise ValueError("noise policy holds non-finite values or a non-positive sigma")
        per_prompt = "mu_basis" in tensors
        kwargs: dict[str, Any] = {"sigma_min": float(tensors["sigma_min"]) if "sigma_min" in tensors else 1e-4}
        if per_prompt:
            try:
                hidden, embed_dim = tensors["encoder.0.weight"].shape
                rank = tensors["encoder.2.weight"].shape[0]
            except KeyError as err:
                raise ValueError(f"per-prompt noise policy lacks {err.args[0]}") from None
            kwargs.update(embed_dim=int(embed_dim), rank=int(rank), hidden=int(hidden))
        policy = cls(tuple(mu.shape), **kwargs)
        own = dict(policy.named_parameters())
        unknown = sorted(set(tensors) - set(own))
        if unknown:
            raise ValueError(f"not a noise policy: unknown tensor {unknown[0]!r}")
        with torch.no_grad():
            for name, param in own.items():
                if name not in tensors:
                    raise ValueError(f"noise policy lacks {name!r}")
                if tensors[name].shape != param.shape:
                    raise ValueError(f"noise policy {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(param.shape)}")
                param.copy_(tensors[name])
        return policy.requires_grad_(False).eval()


class ValueNetwork(nn.Module):
    """``V(μ, σ, e)``: μ and σ average-pooled to ``bins`` values each, with the pooled prompt embedding, -> MLP."""

    def __init__(self, embed_dim: int, *, bins: int = 64, hidden: int = 64):
        super().__init__()
        self.bins = bins
        self.net = nn.Sequential(nn.Linear(2 * bins + embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def features(self, mu: torch.Tensor, sigma: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        b = mu.shape[0]
        pool = lambda x: F.adaptive_avg_pool1d(x.float().reshape(b, 1, -1), self.bins).reshape(b, self.bins)
        return torch.cat([pool(mu), pool(sigma), embedding.float()], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


def find_loss(log_prob: torch.Tensor, anchor_log_prob: torch.Tensor, advantages: torch.Tensor, mu: torch.Tensor,
              sigma: torch.Tensor, *, ratio_clip: float, reward_weight: float, kl_weight: float
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``mean_B[-λ_r · A · clamp(exp(log π - log π_anchor), 1-ε, 1+ε)] + λ_KL · mean_B mean_d[μ² + (σ-1)²]``."""
    ratio = torch.exp(log_prob - anchor_log_prob.detach())
    clamped = torch.clamp(ratio, 1.0 - ratio_clip, 1.0 + ratio_clip)
    policy = -(reward_weight * advantages.detach() * clamped).mean()
    distance = mean_over_sample(mu.float() ** 2 + (sigma.float() - 1.0) ** 2).mean()
    loss = policy + kl_weight * distance
    with torch.no_grad():
        stats = {"policy_loss": policy.detach(), "kl_distance": distance.detach(), "ratio": ratio.mean(),
                 "clipfrac": ((ratio - 1.0).abs() > ratio_clip).float().mean()}
    return loss, stats


@register_section("find")
@dataclass
class FINDConfig:
    #: one noise law per prompt (a small network on the prompt embedding) instead of one shared by all prompts
    per_prompt: bool = False
    #: per-prompt network: hidden width and the number of latent directions it moves μ and log σ along
    hidden: int = 64
    rank: int = 8
    #: lower clamp of σ
    sigma_min: float = 1e-4
    #: λ_r and λ_KL
    reward_weight: float = 10.0
    kl_weight: float = 0.01
    #: ε of the clamped ratio
    ratio_clip: float = 0.2
    #: what the ratio is taken against: N(0, I) ("initial", as released) or the iterate that drew z ("previous")
    anchor: Literal["initial", "previous"] = "initial"
    #: clamp rewards at 0 before use (released ``reward_filter``)
    reward_filter: bool = False
    #: learned reward baseline V(μ, σ, e); off: A = r
    value: bool = True
    value_learning_rate: float = 1e-4
    value_steps: int = 5
    value_batch_size: int = 32
    value_buffer_size: int = 1000
    value_bins: int = 64
    value_hidden: int = 64


@register_algorithm
class FIND(Algorithm):
    name = "find"
    config_class = FINDConfig
    needs_log_probs = False
    default_advantage_mode = None

    def validate(self) -> None:
        super().validate()
        c = self.cfg
        checks = [
            ("sigma_min", c.sigma_min, c.sigma_min > 0), ("ratio_clip", c.ratio_clip, 0 < c.ratio_clip < 1),
            ("reward_weight", c.reward_weight, c.reward_weight >= 0), ("kl_weight", c.kl_weight, c.kl_weight >= 0),
            ("value_learning_rate", c.value_learning_rate, c.value_learning_rate > 0),
            ("value_steps", c.value_steps, c.value_steps >= 0), ("value_batch_size", c.value_batch_size, c.value_batch_size >= 1),
            ("value_buffer_size", c.value_buffer_size, c.value_buffer_size >= 1), ("value_bins", c.value_bins, c.value_bins >= 1),
            ("value_hidden", c.value_hidden, c.value_hidden >= 1), ("rank", c.rank, c.rank >= 1), ("hidden", c.hidden, c.hidden >= 1),
        ]
        for key, value, ok in checks:
            if not (ok and math.isfinite(value)):
                raise ConfigError(f"find.{key} = {value} is out of range")
        if self.config.model.lora:
            raise ConfigError("model.lora = true, but find keeps the model frozen and trains the noise law: set model.lora = false")

    def micro_steps_per_batch(self) -> int:
        return 1

    # ------------------------------------------------------------------------ trainables
    def setup_trainable(self, adapter) -> None:
        adapter.trainable_denoiser.requires_grad_(False)
        s, c = self.config.sampling, self.cfg
        eps = adapter.prepare_latents(1, torch.Generator("cpu").manual_seed(0), height=s.height, width=s.width,
                                      num_frames=s.num_frames)
        with torch.no_grad():
            embed_dim = prompt_embedding(adapter.encode_prompts(["a"], do_cfg=False)).shape[-1]
        self.policy = NoisePolicy(eps.shape[1:], embed_dim=embed_dim if c.per_prompt else None, rank=c.rank, hidden=c.hidden,
                                  sigma_min=c.sigma_min).to(adapter.device)
        adapter.noise_policy = self.policy
        self.value_net = ValueNetwork(embed_dim, bins=c.value_bins, hidden=c.value_hidden).to(adapter.device)
        self.value_optimizer = torch.optim.AdamW(self.value_net.parameters(), lr=c.value_learning_rate)
        self.buffer_features = torch.zeros(0, 2 * c.value_bins + embed_dim)
        self.buffer_rewards = torch.zeros(0)

    def parameter_groups(self) -> list[ParamGroup]:
        return [ParamGroup("noise", dict(self.policy.named_parameters()), module=self.policy)]

    def after_update(self, global_step: int) -> None:
        self.policy.clamp_()

    # ------------------------------------------------------------------------ collection
    def rollout(self, prompts: list[str], generator, *, sde_window=None, latents: torch.Tensor | None = None):
        """Samples from the current noise law through the frozen sampler; ``latents`` (``sampling.same_latent``)
        is the standard noise ``ε``. Keeps the pooled prompt embedding, ``log π(z)`` of the drawing iterate and
        the value network's input."""
        s = self.config.sampling
        adapter = self.adapter
        do_cfg = s.guidance_scale > 1.0 and not adapter.distilled_guidance
        conditioning = adapter.encode_prompts(prompts, s.negative_prompt or None, do_cfg=do_cfg)
        embedding = prompt_embedding(conditioning)
        eps = latents if latents is not None else adapter.prepare_latents(
            len(prompts), generator, height=s.height, width=s.width, num_frames=s.num_frames)
        with torch.no_grad():
            policy_embedding = embedding if self.policy.per_prompt else None
            z = self.policy.sample_from(eps, policy_embedding)
            mu, sigma = self.policy.distribution(policy_embedding, len(prompts))
            old_log_prob = gaussian_log_prob(z, mu, sigma)
            features = self.value_net.features(mu, sigma, embedding)
        rollout = adapter.sample(prompts, steps=s.steps, guidance_scale=s.guidance_scale, generator=generator,
                                 stochastic=s.stochastic, eta=s.eta, noise_level=s.noise_level, log_probs=False,
                                 latents=z, conditioning=conditioning, sde_window=sde_window)
        rollout.extras.update(prompt_embedding=embedding, old_log_prob=old_log_prob, value_features=features)
        return rollout

    def collect(self, epoch: int):
        from ..online import collect_rollouts

        batch = collect_rollouts(self.trainer, self, epoch)
        rewards = batch.rewards.float()
        if self.cfg.reward_filter:
            rewards = rewards.clamp_min(0.0)
        features = batch.extras["value_features"]
        if self.cfg.value:
            self.train_value(features, rewards, epoch)
            with torch.no_grad():
                baseline = self.value_net(features.to(self.adapter.device)).to(rewards.device)
            advantages = rewards - baseline
        else:
            advantages = rewards
        batch.extras["advantages"] = advantages.to(batch.latents.device)
        return batch

    def train_value(self, features: torch.Tensor, rewards: torch.Tensor, epoch: int) -> float:
        """Add the batch (of every process) to the buffer, then ``value_steps`` MSE steps on random minibatches
        of it; the same on every process, so the value networks stay equal. Returns the last step's MSE."""
        acc = self.trainer.accelerator
        if acc.num_processes > 1:
            features, rewards = acc.gather(features.contiguous()), acc.gather(rewards.contiguous())
        c = self.cfg
        self.buffer_features = torch.cat([self.buffer_features, features.detach().float().cpu()])[-c.value_buffer_size:]
        self.buffer_rewards = torch.cat([self.buffer_rewards, rewards.detach().float().cpu()])[-c.value_buffer_size:]
        self.value_net.train()
        mse = float("nan")
        for step in range(c.value_steps):
            pick = torch.randint(len(self.buffer_rewards), (c.value_batch_size,), generator=self.generator("value", epoch, step))
            device = next(self.value_net.parameters()).device
            prediction = self.value_net(self.buffer_features[pick].to(device))
            loss = F.mse_loss(prediction, self.buffer_rewards[pick].to(device))
            self.value_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.value_optimizer.step()
            mse = float(loss.detach())
        self.value_net.eval()
        self._value_mse = mse
        return mse

    def epoch_stats(self, batch) -> dict[str, Any]:
        stats = super().epoch_stats(batch)
        with torch.no_grad():
            stats.update(noise_mu_abs=float(self.policy.mu.abs().mean()), noise_sigma_mean=float(self.policy.sigma.mean()),
                         advantage_mean=float(batch.extras["advantages"].float().mean()))
        if self.cfg.value:
            stats["value_mse"] = getattr(self, "_value_mse", float("nan"))
        return stats

    # ------------------------------------------------------------------------ loss
    def micro_batches(self, batch, epoch: int, inner_epoch: int):
        yield batch

    def loss(self, micro):
        batch = micro
        z = batch.latents[:, 0]
        embedding = batch.extras["prompt_embedding"] if self.policy.per_prompt else None
        mu, sigma = self.policy.distribution(embedding, z.shape[0])
        log_prob = gaussian_log_prob(z, mu, sigma)
        if self.cfg.anchor == "previous":
            anchor = batch.extras["old_log_prob"].to(log_prob.device)
        else:
            anchor = gaussian_log_prob(z, torch.zeros_like(z), torch.ones_like(z))
        advantages = batch.extras["advantages"].to(log_prob.device).float()
        return find_loss(log_prob, anchor, advantages, mu, sigma, ratio_clip=self.cfg.ratio_clip,
                         reward_weight=self.cfg.reward_weight, kl_weight=self.cfg.kl_weight)

    # ------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"value_net": self.value_net.state_dict(), "value_optimizer": self.value_optimizer.state_dict(),
                "buffer_features": self.buffer_features, "buffer_rewards": self.buffer_rewards}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value_net.load_state_dict(state["value_net"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.buffer_features, self.buffer_rewards = state["buffer_features"], state["buffer_rewards"]


def check_noise_policy(adapter, tensors: Mapping[str, torch.Tensor]) -> NoisePolicy:
    """The policy ``tensors`` hold, checked against ``adapter``'s model (latent shape, prompt-embedding width);
    raises ``ValueError`` naming the problem. Nothing is installed."""
    policy = NoisePolicy.from_tensors(tensors)
    expected = tuple(adapter.prepare_latents(1, torch.Generator("cpu").manual_seed(0)).shape[1:])
    if expected != policy.latent_shape:
        raise ValueError(f"the noise policy is for latents of shape {policy.latent_shape}, but the model draws {expected}")
    if policy.per_prompt:
        with torch.no_grad():
            dim = prompt_embedding(adapter.encode_prompts(["a"], do_cfg=False)).shape[-1]
        wanted = policy.encoder[0].in_features
        if dim != wanted:
            raise ValueError(f"the per-prompt noise policy takes prompt embeddings of width {wanted}, the model's are {dim}")
    return policy


def load_noise_policy(adapter, tensors: Mapping[str, torch.Tensor]) -> NoisePolicy:
    """Install a saved noise law on ``adapter`` (``adapter.sample`` then draws its initial noise from it), after
    :func:`check_noise_policy`."""
    policy = check_noise_policy(adapter, tensors)
    adapter.noise_policy = policy.to(adapter.device)
    return policy
