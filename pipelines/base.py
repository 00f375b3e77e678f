"""The pipeline adapter: the differentiable primitives every algorithm needs, for any family.

A trainer only ever talks to a :class:`PipelineAdapter`; it never knows whether a UNet or a
transformer, epsilon, v or flow velocity sits underneath. The class hierarchy keeps one place per
concept:

* :class:`PipelineAdapter` (here): validation, the generic sampling loop, CFG, the reference
  context, LoRA attach/save, memory options.
* A *process* mixin owns the noise schedule math: ``pipelines/diffusion.py`` (variance preserving,
  DDIM/DDPM, epsilon or v) and ``pipelines/flow.py`` (rectified flow, Euler ODE / Flow-GRPO SDE).
  It implements :meth:`_schedule`, :meth:`_step`, :meth:`add_noise`, :meth:`training_target`,
  :meth:`invert`.
* A *family* adapter (``sd.py``, ``sdxl.py``, ``sd3.py``, ``flux.py``, ``cogvideox.py``, ``wan.py``)
  owns conditioning, the denoiser call, latent shapes and decoding: :meth:`encode_prompts`,
  :meth:`_forward`, :meth:`prepare_latents`, :meth:`decode`, :meth:`encode`.

Conditioning is a dict ``{"cond": {...}, "uncond": {...} | None}`` whose tensors are batch-first,
so it can be sliced, concatenated and stored in a :class:`~diffalign.rollout.Rollout`.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import torch

from diffalign.errors import UserError
from diffalign.registry import Registry
from diffalign.rollout import Rollout

from .samplers import StepOutput

logger = logging.getLogger(__name__)

Generator = torch.Generator | list[torch.Generator] | None
Conditioning = dict[str, Any]


class AdapterError(UserError):
    """Bad input to an adapter; the message names the argument and the problem."""


class UnsupportedPipelineError(AdapterError):
    """The pipeline class has no adapter; the message lists the supported ones."""


#: what :meth:`PipelineAdapter.sample` keeps of the trajectory
KEEP_LATENTS = ("all", "final")


def cat_cond(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-sample conditioning dicts along the batch dim (non-tensors taken from the first)."""
    out: dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([p[key] for p in parts])
        elif isinstance(value, dict):
            out[key] = cat_cond([p[key] for p in parts])
        else:
            out[key] = value
    return out


def slice_cond(cond: dict[str, Any], index) -> dict[str, Any]:
    return {
        k: (v[index] if isinstance(v, torch.Tensor) else slice_cond(v, index) if isinstance(v, dict) else v)
        for k, v in cond.items()
    }


def check_encode_input(media: torch.Tensor, modality: str) -> None:
    """``encode``'s input check: :func:`diffalign.media.check_media`, raised as an :class:`AdapterError`."""
    from diffalign.media import MediaError, check_media

    try:
        check_media(media, modality)
    except MediaError as err:
        raise AdapterError(f"encode: {err}") from None


def negative_prompt_list(negative_prompts: Sequence[str] | str | None, batch: int) -> list[str] | None:
    """``None``, one string for every sample, or one string per sample -> a list of ``batch`` strings."""
    if negative_prompts is None:
        return None
    if isinstance(negative_prompts, str):
        return [negative_prompts] * batch
    negative_prompts = list(negative_prompts)
    if len(negative_prompts) != batch or not all(isinstance(p, str) for p in negative_prompts):
        raise AdapterError(f"negative_prompts must be a string or {batch} strings (one per prompt), got {negative_prompts!r}")
    return negative_prompts


def _sampler_at(sampler: dict[str, Any], index: int) -> dict[str, Any]:
    """The sampler settings of step ``index``: deterministic outside an SDE window."""
    window = sampler.get("sde_window")
    if window is None or window[0] <= index < window[1]:
        return sampler
    return {**sampler, "stochastic": False, "eta": 0.0, "noise_level": 0.0}


def _expand_timestep(t: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape[0] != batch:
        raise AdapterError(f"timestep batch {t.shape[0]} does not match sample batch {batch}")
    return t


class PipelineAdapter(ABC):
    """Wraps one diffusers pipeline. Build with :func:`diffalign.pipelines.load`."""

    family: ClassVar[str] = "abstract"
    modality: ClassVar[str] = "image"
    #: diffusers pipeline class names this adapter drives
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    #: pipeline component holding the denoiser ("unet" or "transformer")
    denoiser_name: ClassVar[str] = "unet"
    #: default LoRA target modules on the denoiser
    lora_target_modules: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    #: True when guidance is a model input (FLUX-dev) instead of a two-branch CFG mix
    distilled_guidance: ClassVar[bool] = False
    #: ``sample(timesteps=...)`` (a schedule per sample) is supported: the DDIM families
    per_sample_timesteps: ClassVar[bool] = False

    def __init__(self, pipe, device: torch.device | str | None = None):
        self.pipe = pipe
        if device is not None:
            pipe.to(device)
        self._reference_model: torch.nn.Module | None = None
        self._reference_active = False
        #: named snapshots of the trainable weights (see :meth:`save_snapshot`)
        self._snapshots: dict[str, dict[str, torch.Tensor]] = {}
        self.lora_config = None
        self.lora_adapter_name = "default"
        #: a learned initial-noise law (FIND): ``transform(eps, conditioning) -> x_T``, used by :meth:`sample`
        #: whenever it draws the initial noise itself
        self.noise_policy = None
        for module in self._frozen_modules():
            module.requires_grad_(False)

    # ------------------------------------------------------------------ properties
    @property
    def denoiser(self) -> torch.nn.Module:
        """The network being trained (or its frozen reference inside :meth:`reference`)."""
        if self._reference_active and self._reference_model is not None:
            return self._reference_model
        return getattr(self.pipe, self.denoiser_name)

    @property
    def trainable_denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        return self.trainable_denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.trainable_denoiser.dtype

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    @abstractmethod
    def prediction_type(self) -> str:
        """``"epsilon"``, ``"v_prediction"``, ``"sample"`` or ``"flow"``."""

    def _frozen_modules(self) -> list[torch.nn.Module]:
        """Everything but the denoiser: text encoders and the autoencoder are never trained here."""
        names = [n for n, c in self.pipe.components.items() if isinstance(c, torch.nn.Module)]
        return [getattr(self.pipe, n) for n in names if n != self.denoiser_name]

    # --------------------------------------------------------------- family hooks
    @abstractmethod
    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | str | None = None, do_cfg: bool = True
    ) -> Conditioning:
        """Text -> ``{"cond": {...}, "uncond": {...} | None}`` (batch-first tensors)."""

    @abstractmethod
    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], **kwargs) -> torch.Tensor:
        """One denoiser call in the model's own prediction space; ``t`` is ``[B]`` in diffusers units."""

    @abstractmethod
    def prepare_latents(
        self, batch_size: int, generator: Generator = None, height: int | None = None,
        width: int | None = None, num_frames: int | None = None,
    ) -> torch.Tensor:
        """Initial noise, drawn exactly as the diffusers pipeline draws it for the same generator."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> media in [0, 1] (``B×C×H×W`` or ``B×T×C×H×W``); differentiable."""

    @abstractmethod
    def encode(self, media: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        """Media in [0, 1] -> clean latents ``x0`` as the denoiser sees them (scaled, shifted, packed)."""

    # -------------------------------------------------------------- process hooks
    @abstractmethod
    def _schedule(self, steps: int, **options) -> dict[str, torch.Tensor]:
        """Sampler schedule: ``{"timesteps": [S], ...}`` (flow adds ``"sigmas": [S+1]``)."""

    @abstractmethod
    def _step(
        self, model_output: torch.Tensor, index: int | torch.Tensor, sample: torch.Tensor, schedule: dict[str, torch.Tensor],
        sampler: dict[str, Any], generator: Generator = None, prev_sample: torch.Tensor | None = None,
    ) -> StepOutput:
        """One sampler transition ``index -> index+1`` with its log-density (stochastic settings);
        ``index`` may be a ``[B]`` tensor of per-sample indices."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process ``q(x_t | x0)`` at diffusers timesteps ``t`` (``[B]``)."""

    @abstractmethod
    def implied_noise(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise ``ε`` with ``add_noise(x0, ε, t) == x_t`` (the target of an inversion-based loss)."""

    @abstractmethod
    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What :meth:`predict` should output at ``add_noise(x0, noise, t)``: ε, v or ``noise - x0``."""

    @abstractmethod
    def invert(
        self, x0: torch.Tensor, conditioning: Conditioning, steps: int = 50, guidance_scale: float = 1.0,
        renoise_iterations: int = 0, until_step: int | None = None,
    ) -> Rollout:
        """Deterministic inversion ``x0 -> x_T`` (DDIM inversion / reverse Euler), optionally with the
        ReNoise fixed-point refinement; returns a rollout whose ``latents`` run from ``x_T`` to ``x0`` so that
        deterministic sampling from ``latents[:, 0]`` reconstructs ``x0``."""

    @abstractmethod
    def predicted_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The one-step clean-latent estimate ``x̂0`` from a :meth:`predict` output at ``(x_t, t)`` (differentiable)."""

    def sample_training_timesteps(self, batch_size: int, generator: Generator = None) -> torch.Tensor:
        """Timesteps ``[B]`` for a denoising (matching) loss, drawn as the family's trainers draw them."""
        raise NotImplementedError

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_prompts(prompts: Sequence[str] | str) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise AdapterError("prompts is empty: give at least one prompt")
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if bad:
            raise AdapterError(f"prompts must be strings; entries {bad} are not")
        return prompts

    @staticmethod
    def _check_steps(steps: int) -> int:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
            raise AdapterError(f"steps must be a positive integer, got {steps!r}")
        return steps

    # ---------------------------------------------------------------- prediction
    def predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | float | int,
        conditioning: Conditioning,
        guidance_scale: float = 1.0,
        cfg_grad: str = "both",
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """Model output under classifier-free guidance, in the model's prediction space.

        ``ε̂ = ε_u + w (ε_c - ε_u)``; with ``cfg_grad="cond_only"`` the unconditional branch is
        detached (Flow-GRPO), so gradients flow only through the conditional prediction.
        """
        if cfg_grad not in ("both", "cond_only"):
            raise AdapterError(f"cfg_grad must be 'both' or 'cond_only', got {cfg_grad!r}")
        cond = conditioning["cond"]
        uncond = conditioning.get("uncond")
        batch = x_t.shape[0]
        t = _expand_timestep(t, batch, x_t.device)
        first = next(v for v in cond.values() if isinstance(v, torch.Tensor))
        if first.shape[0] != batch:
            raise AdapterError(f"conditioning batch {first.shape[0]} does not match latents batch {batch}")
        x_in = x_t.to(self.dtype)
        if self.distilled_guidance or guidance_scale <= 1.0 or uncond is None:
            if not self.distilled_guidance and guidance_scale > 1.0 and uncond is None:
                raise AdapterError("guidance_scale > 1 needs unconditional conditioning (encode with do_cfg=True)")
            return self._forward(x_in, t, cond, guidance_scale=guidance_scale)
        if cfg_grad == "cond_only":
            with torch.no_grad():
                out_u = self._forward(x_in, t, uncond, guidance_scale=guidance_scale)
            out_c = self._forward(x_in, t, cond, guidance_scale=guidance_scale)
        else:
            both = self._forward(
                torch.cat([x_in, x_in]), torch.cat([t, t]), cat_cond([uncond, cond]), guidance_scale=guidance_scale
            )
            out_u, out_c = both.chunk(2)
        guided = out_u + guidance_scale * (out_c - out_u)
        if guidance_rescale > 0:
            dims = tuple(range(1, guided.ndim))
            std_c = out_c.std(dim=dims, keepdim=True)
            std_g = guided.std(dim=dims, keepdim=True)
            guided = guidance_rescale * guided * (std_c / std_g) + (1 - guidance_rescale) * guided
        return guided

    # ------------------------------------------------------------------- sampling
    def sample(
        self,
        prompts: Sequence[str] | str,
        steps: int = 20,
        guidance_scale: float = 1.0,
        generator: Generator = None,
        *,
        negative_prompts: Sequence[str] | str | None = None,
        stochastic: bool = False,
        eta: float = 1.0,
        noise_level: float = 0.7,
        log_probs: bool | None = None,
        log_prob_reduce: str = "mean",
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        latents: torch.Tensor | None = None,
        conditioning: Conditioning | None = None,
        decode: bool = True,
        with_grad: bool = False,
        progress: bool = False,
        sde_window: tuple[int, int] | None = None,
        return_predictions: bool = False,
        timesteps: torch.Tensor | None = None,
        grad_steps: int | torch.Tensor | None = None,
        checkpoint_denoiser: bool = False,
        from_step: int = 0,
        until_step: int | None = None,
        keep_latents: str = "all",
        **schedule_options,
    ) -> Rollout:
        """Sample a batch and record the whole trajectory.

        ``stochastic=False`` is the family's deterministic sampler (DDIM η=0 / Euler ODE) and matches the
        diffusers pipeline for the same generator. ``stochastic=True`` uses DDIM with ``eta`` or the
        flow SDE with ``noise_level`` and records per-step log-probs (``log_probs`` defaults to
        ``stochastic``). ``sde_window=(start, end)`` makes only the steps ``start <= i < end`` stochastic
        (Flow-GRPO-Fast, MixGRPO): the others take the deterministic step and record log-prob 0, so all the
        sample-to-sample variation comes from the window's noise (and the initial latents).

        Opt-in extras (Diffusion-DRO's replay buffer): ``return_predictions=True`` keeps each step's own
        model output (after guidance) as ``extras["predictions"]`` (``B×S×L``); ``timesteps`` (``B×S``
        integer model timesteps, strictly decreasing per row; DDIM families only, no log-probs) gives every
        sample its own schedule, step ``i`` going from ``timesteps[:, i]`` to ``timesteps[:, i+1]`` (the last
        to the final ᾱ), kept as ``extras["sample_timesteps"]`` (``rollout.timesteps`` stays the shared
        schedule). Without them the rollout carries neither.

        Reward backpropagation (DRaFT, AlignProp, ReFL): ``with_grad=True`` keeps the graph of every step and of
        ``decode``; ``grad_steps=K`` keeps it for the last ``K`` steps run only (an int, or a ``[B]`` integer
        tensor: sample ``b`` keeps its last ``K_b``), the earlier ones run under ``no_grad`` (so
        ``∂x_0/∂θ`` flows through the last ``K`` denoiser calls only; the latents entering the window are
        constants), and implies ``with_grad``. ``checkpoint_denoiser=True`` recomputes each kept denoiser call in the backward pass
        (``torch.utils.checkpoint``): the same gradients for the memory of one call's activations.
        ``from_step``/``until_step`` run only steps ``from_step <= i < until_step`` of the ``steps``-step
        schedule, starting from ``latents`` (which must then be given when ``from_step > 0``); the rollout's
        ``timesteps`` (and ``sigmas``) are that part of the schedule, and it has no log-probs.
        """
        prompts = self._check_prompts(prompts)
        steps = self._check_steps(steps)
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
            raise AdapterError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if log_prob_reduce not in ("mean", "sum"):
            raise AdapterError(f"log_prob_reduce must be 'mean' or 'sum', got {log_prob_reduce!r}")
        if stochastic and (eta if self.prediction_type != "flow" else noise_level) <= 0:
            raise AdapterError("stochastic sampling needs eta > 0 (DDIM) or noise_level > 0 (flow SDE)")
        if keep_latents not in KEEP_LATENTS:
            raise AdapterError(f"keep_latents must be one of {', '.join(KEEP_LATENTS)}, got {keep_latents!r}")
        log_probs = stochastic if log_probs is None else log_probs
        if log_probs and not stochastic:
            raise AdapterError("log_probs=True needs stochastic=True: a deterministic step has no density")
        if sde_window is not None:
            if not stochastic:
                raise AdapterError("sde_window needs stochastic=True")
            start, end = (int(v) for v in sde_window)
            if not 0 <= start < end <= steps:
                raise AdapterError(f"sde_window must satisfy 0 <= start < end <= steps={steps}, got {tuple(sde_window)}")
        batch = len(prompts)
        stop = steps if until_step is None else until_step
        if not isinstance(from_step, int) or not isinstance(stop, int) or not 0 <= from_step < stop <= steps:
            raise AdapterError(f"from_step and until_step must satisfy 0 <= from_step < until_step <= steps={steps}, "
                               f"got {from_step!r} and {until_step!r}")
        partial = from_step > 0 or stop < steps
        if partial and log_probs:
            raise AdapterError("from_step/until_step sample part of a schedule: give log_probs=False")
        if from_step > 0 and latents is None:
            raise AdapterError(f"from_step={from_step} needs the latents at that step (latents=...)")
        keep_from = self._grad_window(grad_steps, batch, from_step, stop)
        with_grad = with_grad or grad_steps is not None
        do_cfg = guidance_scale > 1.0 and not self.distilled_guidance
        if conditioning is None:
            with torch.no_grad():
                conditioning = self.encode_prompts(prompts, negative_prompts, do_cfg=do_cfg)
        if latents is None:
            latents = self.prepare_latents(batch, generator, height=height, width=width, num_frames=num_frames)
            if self.noise_policy is not None:
                latents = self.noise_policy.transform(latents, conditioning)
        elif latents.shape[0] != batch:
            raise AdapterError(f"latents batch {latents.shape[0]} does not match {batch} prompts")
        schedule = self._schedule(steps, latents=latents, **schedule_options)
        if timesteps is not None:
            schedule["sample_timesteps"] = self._check_sample_timesteps(timesteps, batch, steps, log_probs)
        sampler = {
            "stochastic": stochastic,
            "eta": eta if stochastic else 0.0,
            "noise_level": noise_level if stochastic else 0.0,
            "guidance_scale": guidance_scale,
            "reduce": log_prob_reduce,
            "steps": steps,
            **schedule_options,
        }
        if sde_window is not None:
            sampler["sde_window"] = [start, end]
        keep_all = keep_latents == "all"
        trajectory = [latents] if keep_all else []
        step_log_probs = []
        predictions = []
        x = latents
        grad_context = contextlib.nullcontext() if with_grad else torch.no_grad()
        iterator = range(from_step, stop)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="sampling", leave=False)
        with grad_context:
            for index in iterator:
                t = schedule["sample_timesteps"][:, index] if timesteps is not None else schedule["timesteps"][index]
                keep = None if keep_from is None or not with_grad else index >= keep_from.to(x.device)
                with torch.no_grad() if keep is not None and not keep.any() else contextlib.nullcontext():
                    out = self._predict_in_sample(x, t, conditioning, guidance_scale, checkpoint_denoiser and with_grad)
                    if keep is not None and not keep.all():  # samples before their window: no gradient here
                        out = torch.where(keep.reshape(-1, *([1] * (out.ndim - 1))), out, out.detach())
                step = self._step(out, index, x, schedule, _sampler_at(sampler, index), generator=generator)
                x = step.prev_sample.to(latents.dtype)
                if keep_all:
                    trajectory.append(x)
                if return_predictions:
                    predictions.append(out.to(latents.dtype))
                if log_probs:
                    step_log_probs.append(step.log_prob if step.log_prob is not None
                                          else torch.zeros(batch, device=x.device))
            media = self.decode(x) if decode else None
        extras: dict[str, Any] = {}
        if return_predictions:
            extras["predictions"] = torch.stack(predictions, dim=1)
        if timesteps is not None:
            extras["sample_timesteps"] = schedule["sample_timesteps"]
        sigmas = schedule.get("sigmas")
        return Rollout(
            prompts=prompts,
            latents=torch.stack(trajectory if keep_all else [x], dim=1),
            latent_steps=None if keep_all else [stop - from_step],
            timesteps=schedule["timesteps"][from_step:stop] if partial else schedule["timesteps"],
            sigmas=sigmas[from_step : stop + 1] if partial and sigmas is not None else sigmas,
            conditioning=conditioning,
            sampler=sampler,
            log_probs=torch.stack(step_log_probs, dim=1) if log_probs else None,
            media=media,
            extras=extras,
        )

    @staticmethod
    def _grad_window(grad_steps: int | torch.Tensor | None, batch: int, start: int, stop: int) -> torch.Tensor | None:
        """``grad_steps`` (the last ``K`` steps of ``start..stop-1`` keep their graph) -> the first kept step
        index per sample ``[B]`` (CPU), or ``None`` when every step keeps it."""
        if grad_steps is None:
            return None
        k = torch.as_tensor(grad_steps)
        if k.is_floating_point() or k.ndim > 1 or (k.ndim == 1 and k.shape[0] != batch):
            raise AdapterError(f"grad_steps must be an integer or a [{batch}] integer tensor, got {grad_steps!r}")
        if ((k < 1) | (k > stop - start)).any():
            raise AdapterError(f"grad_steps must be in [1, {stop - start}] (the steps sampled), got {k.tolist()}")
        return (stop - k.cpu().long()).expand(batch)

    def _predict_in_sample(self, x: torch.Tensor, t, conditioning: Conditioning, guidance_scale: float,
                           checkpoint: bool) -> torch.Tensor:
        """One sampling step's guided prediction; recomputed in the backward pass when ``checkpoint``."""
        if not checkpoint or not torch.is_grad_enabled():
            return self.predict(x, t, conditioning, guidance_scale)
        from torch.utils.checkpoint import checkpoint as recompute

        return recompute(lambda latents: self.predict(latents, t, conditioning, guidance_scale), x, use_reentrant=False)

    def _check_sample_timesteps(self, timesteps: torch.Tensor, batch: int, steps: int, log_probs: bool) -> torch.Tensor:
        if not self.per_sample_timesteps:
            raise AdapterError(f"{type(self).__name__} does not take per-sample timesteps (DDIM families only)")
        if log_probs:
            raise AdapterError("per-sample timesteps need log_probs=False: step_log_prob re-scores the shared schedule")
        timesteps = torch.as_tensor(timesteps)
        if timesteps.is_floating_point() or tuple(timesteps.shape) != (batch, steps):
            raise AdapterError(f"timesteps must be a {batch}x{steps} integer tensor, got {tuple(timesteps.shape)} {timesteps.dtype}")
        if steps > 1 and not (timesteps[:, 1:] < timesteps[:, :-1]).all():
            raise AdapterError("per-sample timesteps must decrease strictly along each row")
        return timesteps.to(self.device)

    def step_log_prob(
        self, rollout: Rollout, step: int | torch.Tensor, cfg_grad: str = "both", return_mean: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-density of the stored transition ``step -> step+1`` under the *current* weights.

        ``step`` is one index for the whole batch, or a ``[B]`` tensor of per-sample indices (DDPO trains
        each sample's steps in its own random order): one denoiser call either way. Uses the sampler
        settings recorded in the rollout (guidance, eta / noise level, reduction), so right after
        sampling the result equals ``rollout.log_probs[:, step]`` (on-policy ratio 1). Gradients flow
        to the denoiser unless called under ``torch.no_grad()``. With ``return_mean=True`` returns
        ``(log_prob, mean, std)`` (for KL terms on step means).
        """
        if not rollout.sampler.get("stochastic"):
            raise AdapterError("rollout was sampled deterministically; it has no transition densities")
        if rollout.latent_steps is not None:
            raise AdapterError("rollout kept only its final latents (keep_latents='final'); "
                               "re-scoring a transition needs keep_latents='all'")
        index = torch.as_tensor(step).cpu()
        if index.is_floating_point() or index.ndim > 1 or (index.ndim == 1 and index.shape[0] != rollout.batch_size):
            raise AdapterError(f"step must be an integer or a [{rollout.batch_size}] integer tensor, got {step!r}")
        if ((index < 0) | (index >= rollout.num_steps)).any():
            raise AdapterError(f"step must be in [0, {rollout.num_steps}), got {index.tolist()}")
        window = rollout.sampler.get("sde_window")
        if window is not None and ((index < window[0]) | (index >= window[1])).any():
            raise AdapterError(f"step {index.tolist()} lies outside the rollout's SDE window [{window[0]}, {window[1]}): "
                               "that transition was deterministic and has no density")
        schedule = {"timesteps": rollout.timesteps}
        if rollout.sigmas is not None:
            schedule["sigmas"] = rollout.sigmas
        schedule.update(rollout.extras.get("schedule", {}))
        if index.ndim == 0:
            index = int(index)
            x, x_next = rollout.latents[:, index], rollout.latents[:, index + 1]
        else:
            rows = torch.arange(rollout.batch_size, device=rollout.latents.device)
            at = index.to(rollout.latents.device)
            x, x_next = rollout.latents[rows, at], rollout.latents[rows, at + 1]
        out = self.predict(x, rollout.timesteps[index], rollout.conditioning, rollout.sampler["guidance_scale"], cfg_grad)
        result = self._step(out, index, x, schedule, rollout.sampler, prev_sample=x_next)
        if return_mean:
            return result.log_prob, result.mean, result.std
        return result.log_prob

    # ------------------------------------------------------------------ reference
    def freeze_reference(self) -> None:
        """Snapshot the current weights as the frozen reference (full fine-tuning; LoRA needs no copy)."""
        if self.lora_config is not None:
            return
        self._reference_model = copy.deepcopy(self.trainable_denoiser).requires_grad_(False).eval()

    @contextlib.contextmanager
    def reference(self) -> Iterator["PipelineAdapter"]:
        """Inside this context the adapter computes with the frozen reference model.

        LoRA: the adapters are disabled (no second copy). Full fine-tuning: the snapshot taken by
        :meth:`freeze_reference` (taken now if none exists yet). Gradients are off inside.
        """
        if self._reference_active:
            yield self
            return
        with torch.no_grad():
            if self.lora_config is not None:
                denoiser = self.trainable_denoiser
                denoiser.disable_adapters()
                try:
                    yield self
                finally:
                    denoiser.enable_adapters()
            else:
                if self._reference_model is None:
                    self.freeze_reference()
                self._reference_active = True
                try:
                    yield self
                finally:
                    self._reference_active = False

    # ----------------------------------------------------------------- snapshots
    def trainable_named_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The denoiser's trainable parameters by name (the trained LoRA adapter, or every weight)."""
        return {n: p for n, p in self.trainable_denoiser.named_parameters() if p.requires_grad}

    def save_snapshot(self, name: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Keep a copy of the current trainable weights (or of ``weights``) as the snapshot ``name``.

        Snapshots are the named references of the algorithms: AWM's EMA anchor, SePPO's pool of past
        checkpoints, DRO's lagged sampler, IPO's round start. :meth:`reference` stays the frozen base. With
        LoRA a snapshot costs one copy of the adapter, not of the model.
        """
        params = self.trainable_named_parameters()
        if not params:
            raise AdapterError("no trainable parameters to snapshot: attach LoRA or unfreeze the denoiser first")
        source = weights if weights is not None else {n: p.detach() for n, p in params.items()}
        missing = [n for n in params if n not in source]
        if missing:
            raise AdapterError(f"snapshot {name!r} lacks trainable parameters, e.g. {missing[:3]}")
        self._snapshots[name] = {n: source[n].detach().to(params[n].device, params[n].dtype).clone() for n in params}

    def snapshot_weights(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of snapshot ``name`` (modify them in place to update it, e.g. an EMA)."""
        if name not in self._snapshots:
            raise AdapterError(f"no snapshot named {name!r}; saved: {', '.join(self._snapshots) or 'none'}")
        return self._snapshots[name]

    @property
    def snapshot_names(self) -> list[str]:
        return list(self._snapshots)

    def drop_snapshot(self, name: str) -> None:
        self._snapshots.pop(name, None)

    @contextlib.contextmanager
    def snapshot(self, name: str) -> Iterator["PipelineAdapter"]:
        """Inside, the trainable parameters hold snapshot ``name`` (no gradients); restored on exit.

        The parameters' storage is swapped, not copied, so entering costs nothing at any model size.
        """
        weights = self.snapshot_weights(name)
        params = self.trainable_named_parameters()
        saved = {n: p.data for n, p in params.items()}
        with torch.no_grad():
            try:
                for n, p in params.items():
                    p.data = weights[n]
                yield self
            finally:
                for n, p in params.items():
                    p.data = saved[n]

    def snapshots_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every snapshot on CPU (for checkpoints)."""
        return {name: {n: t.detach().cpu().clone() for n, t in w.items()} for name, w in self._snapshots.items()}

    def load_snapshots_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self._snapshots = {}
        for name, weights in state.items():
            self.save_snapshot(name, weights)

    # ------------------------------------------------------------------------ LoRA
    def add_lora(
        self,
        rank: int = 4,
        alpha: float | None = None,
        target_modules: Sequence[str] | None = None,
        init: str | bool = "gaussian",
        dropout: float = 0.0,
        adapter_name: str = "default",
    ):
        """Attach a peft LoRA adapter to the denoiser; base weights frozen, LoRA params kept in fp32.

        The first adapter is the trained one. Later ones (an EMA anchor, a reference) are frozen and
        the trained adapter stays active.
        """
        from peft import LoraConfig

        if rank <= 0:
            raise AdapterError(f"LoRA rank must be positive, got {rank}")
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha if alpha is not None else rank,
            target_modules=list(target_modules or self.lora_target_modules),
            init_lora_weights=init,
            lora_dropout=dropout,
        )
        denoiser = self.trainable_denoiser
        primary = self.lora_config is None
        if primary:
            denoiser.requires_grad_(False)
        denoiser.add_adapter(config, adapter_name=adapter_name)
        if primary:
            self.lora_config, self.lora_adapter_name = config, adapter_name
        else:  # an auxiliary adapter (e.g. AWM's EMA anchor): diffusers activates it; keep the trained one active
            denoiser.set_adapter(self.lora_adapter_name)
        for name, param in denoiser.named_parameters():
            if "lora_" in name:
                param.data = param.data.float()
                if f".{adapter_name}." in name:
                    param.requires_grad_(primary)
                elif f".{self.lora_adapter_name}." in name:
                    param.requires_grad_(True)
        return config

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.trainable_denoiser.parameters() if p.requires_grad]

    def lora_state_dict(self, adapter_name: str = "default") -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        if self.lora_config is None:
            raise AdapterError("no LoRA adapter attached: call add_lora() first")
        return get_peft_model_state_dict(self.trainable_denoiser, adapter_name=adapter_name)

    def save_lora(self, directory: str | Path, adapter_name: str = "default") -> Path:
        """Write ``pytorch_lora_weights.safetensors`` that stock diffusers' ``load_lora_weights`` reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.lora_state_dict(adapter_name).items()}
        save = type(self.pipe).save_lora_weights
        kwargs: dict[str, Any] = {f"{self.denoiser_name}_lora_layers": state}
        metadata_key = f"{self.denoiser_name}_lora_adapter_metadata"
        if metadata_key in inspect.signature(save).parameters:
            kwargs[metadata_key] = self.trainable_denoiser.peft_config[adapter_name].to_dict()
        save(str(directory), safe_serialization=True, **kwargs)
        return directory

    def load_lora(self, directory: str | Path, adapter_name: str = "default", weight_name: str | None = None) -> None:
        """Load LoRA weights saved by :meth:`save_lora` (or any diffusers LoRA; ``weight_name`` picks the file)."""
        self.pipe.load_lora_weights(str(directory), adapter_name=adapter_name, weight_name=weight_name)
        self.lora_config = self.trainable_denoiser.peft_config[adapter_name]
        self.lora_adapter_name = adapter_name

    # -------------------------------------------------------------------- memory
    def configure_memory(self, **options) -> None:
        """Attention backend, slicing, tiling, gradient checkpointing; see :mod:`.memory`."""
        from .memory import configure_memory

        configure_memory(self, **options)

    def to(self, device: torch.device | str) -> "PipelineAdapter":
        self.pipe.to(device)
        if self._reference_model is not None:
            self._reference_model.to(device)
        return self


#: diffusers pipeline class name -> adapter class (other packages add entries via entry points)
ADAPTERS: Registry[type[PipelineAdapter]] = Registry("pipeline class", entry_point_group="diffalign.pipelines")


def register_adapter(cls: type[PipelineAdapter]) -> type[PipelineAdapter]:
    """Class decorator: register ``cls`` for each of its ``pipeline_classes``."""
    for name in cls.pipeline_classes:
        ADAPTERS.register(name, cls, overwrite=True)
    return cls
