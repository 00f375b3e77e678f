"""Stable Diffusion 1.x (epsilon) and 2.x (v-prediction): UNet + one CLIP text encoder + KL autoencoder."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from .base import AdapterError, Conditioning, Generator, PipelineAdapter, negative_prompt_list, register_adapter
from .diffusion import DiffusionProcess

logger = logging.getLogger(__name__)


@register_adapter
class StableDiffusionAdapter(DiffusionProcess, PipelineAdapter):
    """``StableDiffusionPipeline``; the prediction type (ε or v) comes from the scheduler config."""

    family = "sd"
    modality = "image"
    pipeline_classes = ("StableDiffusionPipeline",)
    denoiser_name = "unet"
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")

    # ------------------------------------------------------------ conditioning
    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | str | None = None, do_cfg: bool = True
    ) -> Conditioning:
        prompts = self._check_prompts(prompts)
        negative = negative_prompt_list(negative_prompts, len(prompts))
        cond, uncond = self.pipe.encode_prompt(prompts, self.device, 1, do_cfg, negative_prompt=negative)
        return {"cond": {"prompt_embeds": cond}, "uncond": {"prompt_embeds": uncond} if do_cfg else None}

    def _check_latents(self, x_t: torch.Tensor) -> None:
        channels = self.trainable_denoiser.config.in_channels
        if x_t.ndim != 4 or x_t.shape[1] != channels:
            raise AdapterError(f"latents must be B×{channels}×h×w for this {self.denoiser_name}, got {tuple(x_t.shape)}")

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], **kwargs) -> torch.Tensor:
        self._check_latents(x_t)
        return self.denoiser(x_t, t, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]

    # ----------------------------------------------------------------- latents
    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def default_size(self) -> tuple[int, int]:
        size = self.trainable_denoiser.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return height * self.vae_scale_factor, width * self.vae_scale_factor

    def prepare_latents(
        self, batch_size: int, generator: Generator = None, height: int | None = None,
        width: int | None = None, num_frames: int | None = None,
    ) -> torch.Tensor:
        if num_frames is not None:
            raise AdapterError(f"{type(self).__name__} makes images; num_frames must be None, got {num_frames}")
        default_h, default_w = self.default_size()
        height, width = height or default_h, width or default_w
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise AdapterError(f"height and width must be divisible by {self.vae_scale_factor}, got {height}×{width}")
        channels = self.trainable_denoiser.config.in_channels
        return self.pipe.prepare_latents(batch_size, channels, height, width, self.dtype, self.device, generator)

    # --------------------------------------------------------------------- VAE
    def _vae(self) -> torch.nn.Module:
        vae = self.pipe.vae
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
            logger.info("upcasting the VAE to float32 (its config sets force_upcast)")
            vae.to(torch.float32)
        return vae

    def _latent_stats(self, vae, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
        if mean is None or std is None:
            return None, None
        shape = (1, len(mean), 1, 1)
        return (torch.tensor(mean).view(shape).to(like.device, like.dtype), torch.tensor(std).view(shape).to(like.device, like.dtype))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self._vae()
        z = latents.to(vae.dtype)
        mean, std = self._latent_stats(vae, z)
        scaling = vae.config.scaling_factor
        z = z * std / scaling + mean if mean is not None else z / scaling
        image = vae.decode(z, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def encode(self, media: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        """Images in [0, 1] -> scaled latents; the posterior mean without a generator, a sample with one."""
        if media.ndim != 4 or media.shape[1] != 3:
            raise AdapterError(f"media must be images B×3×H×W in [0, 1], got {tuple(media.shape)}")
        vae = self._vae()
        posterior = vae.encode(media.to(self.device, vae.dtype) * 2 - 1).latent_dist
        z = posterior.mode() if generator is None else posterior.sample(generator)
        mean, std = self._latent_stats(vae, z)
        scaling = vae.config.scaling_factor
        z = (z - mean) * scaling / std if mean is not None else z * scaling
        return z.to(self.dtype)
