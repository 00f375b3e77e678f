"""FLUX.1 (rectified flow, guidance-distilled) adapter around ``FluxPipeline``.

* Latents are kept unpacked (``B×C×h×w``) everywhere outside the denoiser call; :meth:`_forward` packs
  them into 2×2 patch tokens with their latent image ids and unpacks the velocity. The Euler and SDE
  steps are element-wise, so this is the same computation as the pipeline's packed loop, and decoded
  latents or stored rollouts need no image size.
* Guidance: FLUX.1-dev embeds the guidance scale as a model input (``distilled_guidance``); there is no
  unconditional branch and negative prompts are ignored. Models without a guidance embedding
  (FLUX.1-schnell) ignore ``guidance_scale``.
* Schedule: sigmas ``linspace(1, 1/S, S)`` shifted with ``mu = calculate_shift(image tokens)``.
* Default size: the autoencoder's ``sample_size`` (1024 for the FLUX.1 releases, the pipeline's default).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from .base import AdapterError, Conditioning, Generator, PipelineAdapter, negative_prompt_list, register_adapter
from .flow import JOINT_ATTENTION_LORA_TARGETS, FlowMatchingProcess, kl_vae_decode, kl_vae_encode

logger = logging.getLogger(__name__)


@register_adapter
class FluxAdapter(FlowMatchingProcess, PipelineAdapter):
    family = "flux"
    modality = "image"
    pipeline_classes = ("FluxPipeline",)
    denoiser_name = "transformer"
    distilled_guidance = True
    lora_target_modules = JOINT_ATTENTION_LORA_TARGETS

    #: T5 tokens (the pipeline's default)
    max_sequence_length: int = 512

    # ------------------------------------------------------------------ conditioning
    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | str | None = None, do_cfg: bool = True
    ) -> Conditioning:
        prompts = self._check_prompts(prompts)
        if negative_prompt_list(negative_prompts, len(prompts)) is not None:
            logger.warning("FLUX is guidance-distilled: negative prompts are ignored")
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return {"cond": {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}, "uncond": None}

    def _forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], guidance_scale: float = 1.0, **kwargs
    ) -> torch.Tensor:
        batch, channels, height, width = x_t.shape
        pipe = self.pipe
        packed = pipe._pack_latents(x_t, batch, channels, height, width)
        image_ids = pipe._prepare_latent_image_ids(batch, height // 2, width // 2, x_t.device, x_t.dtype)
        embeds = cond["prompt_embeds"].to(self.dtype)
        text_ids = torch.zeros(embeds.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        guidance = None
        if self.trainable_denoiser.config.guidance_embeds:
            guidance = torch.full((batch,), float(guidance_scale), device=x_t.device, dtype=torch.float32)
        velocity = self.denoiser(
            hidden_states=packed,
            timestep=t.to(x_t.dtype) / 1000,
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"].to(self.dtype),
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        scale = pipe.vae_scale_factor
        return pipe._unpack_latents(velocity, height * scale, width * scale, scale)

    # ------------------------------------------------------------------ schedule / latents
    def _image_seq_len(self, latents: torch.Tensor) -> int:
        return (latents.shape[-2] // 2) * (latents.shape[-1] // 2)

    def _custom_sigmas(self, steps: int):
        if self.scheduler.config.get("use_flow_sigmas"):
            return None
        return np.linspace(1.0, 1 / steps, steps)

    def prepare_latents(
        self, batch_size: int, generator: Generator = None, height: int | None = None,
        width: int | None = None, num_frames: int | None = None,
    ) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        if num_frames not in (None, 1):
            raise AdapterError(f"{self.family} generates images; num_frames={num_frames} is not supported")
        scale = self.pipe.vae_scale_factor
        # FluxPipeline hard-codes 128 latent pixels; the autoencoder's sample_size is that same 1024 for the
        # FLUX.1 releases and follows the model for smaller ones
        default = self.pipe.vae.config.get("sample_size") or self.pipe.default_sample_size * scale
        default = default[0] if isinstance(default, (list, tuple)) else default
        height = height or default
        width = width or default
        if height % (2 * scale) or width % (2 * scale):
            raise AdapterError(f"height and width must be multiples of {2 * scale}, got {height}×{width}")
        channels = self.trainable_denoiser.config.in_channels // 4
        shape = (batch_size, channels, height // scale, width // scale)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return kl_vae_decode(self.pipe.vae, latents)

    def encode(self, media: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return kl_vae_encode(self.pipe.vae, media, generator)
