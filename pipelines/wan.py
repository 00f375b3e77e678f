"""Wan 2.1 text-to-video (rectified flow, UMT5 text encoder) adapter around ``WanPipeline``.

Latents are the pipeline's ``B×C×T×h×w`` (16 channels, time compressed ×4, space ×8); media are
``B×T×C×H×W`` in [0, 1]. Guidance is true CFG with the cond and uncond branches (the pipeline runs them
as two calls; the adapter batches them, equal up to float rounding).

Sampler: the Wan releases ship ``UniPCMultistepScheduler`` with ``flow_shift``; sampling through the
adapter always uses the Euler ODE / Flow-GRPO SDE on a ``FlowMatchEulerDiscreteScheduler`` schedule with
the same shift, so its deterministic samples equal the stock pipeline only when that pipeline also runs
``FlowMatchEulerDiscreteScheduler``. Wan 2.2 two-expert and TI2V pipelines are not supported.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import AdapterError, Conditioning, Generator, PipelineAdapter, check_encode_input, negative_prompt_list, register_adapter
from .flow import FlowMatchingProcess


@register_adapter
class WanAdapter(FlowMatchingProcess, PipelineAdapter):
    family = "wan"
    modality = "video"
    pipeline_classes = ("WanPipeline",)
    denoiser_name = "transformer"
    #: self- and cross-attention projections of every block
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")

    #: UMT5 tokens (the default of ``WanPipeline.__call__``; ``encode_prompt`` alone defaults to 226)
    max_sequence_length: int = 512

    def __init__(self, pipe, device: torch.device | str | None = None):
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("boundary_ratio") is not None:
            raise AdapterError("Wan 2.2 two-expert pipelines (transformer_2 / boundary_ratio) are not supported")
        if pipe.config.get("expand_timesteps"):
            raise AdapterError("Wan 2.2 TI2V pipelines (expand_timesteps=True) are not supported")
        super().__init__(pipe, device=device)

    # ------------------------------------------------------------------ conditioning
    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | str | None = None, do_cfg: bool = True
    ) -> Conditioning:
        prompts = self._check_prompts(prompts)
        negative = negative_prompt_list(negative_prompts, len(prompts))
        embeds, neg_embeds = self.pipe.encode_prompt(
            prompt=prompts, negative_prompt=negative, do_classifier_free_guidance=do_cfg,
            max_sequence_length=self.max_sequence_length, device=self.device,
        )
        return {
            "cond": {"prompt_embeds": embeds},
            "uncond": {"prompt_embeds": neg_embeds} if do_cfg else None,
        }

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], **kwargs) -> torch.Tensor:
        return self.denoiser(
            hidden_states=x_t,
            timestep=t,
            encoder_hidden_states=cond["prompt_embeds"].to(self.dtype),
            return_dict=False,
        )[0]

    # ------------------------------------------------------------------ latents
    def _image_seq_len(self, latents: torch.Tensor) -> int:
        _, patch_h, patch_w = self.trainable_denoiser.config.patch_size
        return latents.shape[2] * (latents.shape[3] // patch_h) * (latents.shape[4] // patch_w)

    def prepare_latents(
        self, batch_size: int, generator: Generator = None, height: int | None = None,
        width: int | None = None, num_frames: int | None = None,
    ) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        height, width, num_frames = height or 480, width or 832, num_frames or 81  # the pipeline's defaults
        temporal, spatial = self.pipe.vae_scale_factor_temporal, self.pipe.vae_scale_factor_spatial
        _, patch_h, patch_w = self.trainable_denoiser.config.patch_size
        if num_frames % temporal != 1:
            raise AdapterError(f"num_frames - 1 must be divisible by {temporal}, got num_frames={num_frames}")
        if height % (spatial * patch_h) or width % (spatial * patch_w):
            raise AdapterError(
                f"height and width must be multiples of {spatial * patch_h}×{spatial * patch_w}, got {height}×{width}"
            )
        shape = (
            batch_size,
            self.trainable_denoiser.config.in_channels,
            (num_frames - 1) // temporal + 1,
            height // spatial,
            width // spatial,
        )
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(like.device, torch.float32)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(like.device, torch.float32)
        return mean, inv_std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        mean, inv_std = self._latent_stats(latents)
        z = latents.float() / inv_std + mean
        video = vae.decode(z.to(vae.dtype), return_dict=False)[0]  # B×C×T×H×W in [-1, 1]
        return (video.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)

    def encode(self, media: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        check_encode_input(media, "video")
        vae = self.pipe.vae
        video = (media * 2 - 1).permute(0, 2, 1, 3, 4).to(vae.device, vae.dtype)
        posterior = vae.encode(video).latent_dist
        z = posterior.sample(generator) if generator is not None else posterior.mode()
        mean, inv_std = self._latent_stats(z)
        return (z.float() - mean) * inv_std
