"""Stable Diffusion XL: two CLIP text encoders, pooled text embeds and size/crop micro-conditioning."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import Conditioning, register_adapter
from .base import negative_prompt_list
from .sd import StableDiffusionAdapter


@register_adapter
class StableDiffusionXLAdapter(StableDiffusionAdapter):
    """``StableDiffusionXLPipeline``. The UNet gets ``text_embeds`` (pooled, from text encoder 2) and
    ``time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)``; like the pipeline's
    defaults, original and target size are the output size and the crop is ``(0, 0)``."""

    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)

    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | str | None = None, do_cfg: bool = True
    ) -> Conditioning:
        prompts = self._check_prompts(prompts)
        embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg, negative_prompt=negative_prompt_list(negative_prompts, len(prompts)),
        )
        cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        uncond = {"prompt_embeds": negative_embeds, "pooled_prompt_embeds": negative_pooled} if do_cfg else None
        return {"cond": cond, "uncond": uncond}

    def default_size(self) -> tuple[int, int]:
        size = self.pipe.default_sample_size * self.vae_scale_factor
        return size, size

    def _time_ids(self, x_t: torch.Tensor, pooled: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        size = (x_t.shape[-2] * self.vae_scale_factor, x_t.shape[-1] * self.vae_scale_factor)
        encoder_2 = self.pipe.text_encoder_2
        projection_dim = int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim
        time_ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=projection_dim)
        return time_ids.to(x_t.device).repeat(x_t.shape[0], 1)

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], **kwargs) -> torch.Tensor:
        self._check_latents(x_t)
        embeds, pooled = cond["prompt_embeds"], cond["pooled_prompt_embeds"]
        added = {"text_embeds": pooled, "time_ids": self._time_ids(x_t, pooled, embeds.dtype)}
        return self.denoiser(x_t, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
