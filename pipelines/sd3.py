"""Stable Diffusion 3 / 3.5 (MMDiT, rectified flow) adapter around ``StableDiffusion3Pipeline``.

Conditioning: CLIP-L and CLIG-G penultimate hidden states (concatenated, zero-padded to the T5 width)
followed by the T5 sequence (zeros when ``text_encoder_3`` is absent), plus the two pooled CLIP
projections. Guidance is true two-branch CFG (``[uncond, cond]`` in one batch, as the pipeline does).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import AdapterError, Conditioning, Generator, PipelineAdapter, negative_prompt_list, register_adapter
from .flow import JOINT_ATTENTION_LORA_TARGETS, FlowMatchingProcess, kl_vae_decode, kl_vae_encode


@register_adapter
class SD3Adapter(FlowMatchingProcess, PipelineAdapter):
    family = "sd3"
    modality = "image"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    denoiser_name = "transformer"
    #: Flow-GRPO's targets: joint-attention projections of both streams
    lora_target_modules = JOINT_ATTENTION_LORA_TARGETS

    #: T5 tokens (the pipeline's default)
    max_sequence_length: int = 256

    # ------------------------------------------------------------------ conditioning
    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | str | None = None, do_cfg: bool = True
    ) -> Conditioning:
        prompts = self._check_prompts(prompts)
        negative = negative_prompt_list(negative_prompts, len(prompts))
        embeds, neg_embeds, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, negative_prompt=negative,
            do_classifier_free_guidance=do_cfg, device=self.device, max_sequence_length=self.max_sequence_length,
        )
        cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        uncond = {"prompt_embeds": neg_embeds, "pooled_prompt_embeds": neg_pooled} if do_cfg else None
        return {"cond": cond, "uncond": uncond}

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], **kwargs) -> torch.Tensor:
        return self.denoiser(
            hidden_states=x_t,
            timestep=t,
            encoder_hidden_states=cond["prompt_embeds"].to(self.dtype),
            pooled_projections=cond["pooled_prompt_embeds"].to(self.dtype),
            return_dict=False,
        )[0]

    # ------------------------------------------------------------------ latents
    def _image_seq_len(self, latents: torch.Tensor) -> int:
        patch = self.trainable_denoiser.config.patch_size
        return (latents.shape[-2] // patch) * (latents.shape[-1] // patch)

    def prepare_latents(
        self, batch_size: int, generator: Generator = None, height: int | None = None,
        width: int | None = None, num_frames: int | None = None,
    ) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        if num_frames not in (None, 1):
            raise AdapterError(f"{self.family} generates images; num_frames={num_frames} is not supported")
        scale = self.pipe.vae_scale_factor
        height = height or self.pipe.default_sample_size * scale
        width = width or self.pipe.default_sample_size * scale
        multiple = scale * self.trainable_denoiser.config.patch_size
        if height % multiple or width % multiple:
            raise AdapterError(f"height and width must be multiples of {multiple}, got {height}×{width}")
        shape = (batch_size, self.trainable_denoiser.config.in_channels, height // scale, width // scale)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return kl_vae_decode(self.pipe.vae, latents)

    def encode(self, media: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return kl_vae_encode(self.pipe.vae, media, generator)
