"""CogVideoX: a 3D transformer over video latents ``B×T×C×h×w``, T5 text, v-prediction with DDIM."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import AdapterError, Conditioning, Generator, PipelineAdapter, register_adapter
from .diffusion import DiffusionProcess
from .base import negative_prompt_list


@register_adapter
class CogVideoXAdapter(DiffusionProcess, PipelineAdapter):
    """``CogVideoXPipeline`` sampled with ``CogVideoXDDIMScheduler`` (a ``CogVideoXDPMScheduler`` is
    replaced by the DDIM one built from the same config). Media are videos ``B×T×3×H×W`` in [0, 1]."""

    family = "cogvideox"
    modality = "video"
    pipeline_classes = ("CogVideoXPipeline",)
    denoiser_name = "transformer"
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")
    ddim_scheduler_class = "CogVideoXDDIMScheduler"

    def __init__(self, pipe, device: torch.device | str | None = None):
        super().__init__(pipe, device=device)
        self._rotary_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def max_sequence_length(self) -> int:
        return int(self.trainable_denoiser.config.max_text_seq_length)

    # ------------------------------------------------------------ conditioning
    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | str | None = None, do_cfg: bool = True
    ) -> Conditioning:
        prompts = self._check_prompts(prompts)
        cond, uncond = self.pipe.encode_prompt(
            prompts, negative_prompt_list(negative_prompts, len(prompts)), do_cfg, 1,
            max_sequence_length=self.max_sequence_length, device=self.device,
        )
        return {"cond": {"prompt_embeds": cond}, "uncond": {"prompt_embeds": uncond} if do_cfg else None}

    def _rotary_embeddings(self, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.trainable_denoiser.config.use_rotary_positional_embeddings:
            return None
        scale = self.pipe.vae_scale_factor_spatial
        key = (x_t.shape[1], x_t.shape[-2], x_t.shape[-1], x_t.device)
        if key not in self._rotary_cache:
            self._rotary_cache[key] = self.pipe._prepare_rotary_positional_embeddings(
                x_t.shape[-2] * scale, x_t.shape[-1] * scale, x_t.shape[1], x_t.device
            )
        return self._rotary_cache[key]

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], **kwargs) -> torch.Tensor:
        channels = self.trainable_denoiser.config.in_channels
        if x_t.ndim != 5 or x_t.shape[2] != channels:
            raise AdapterError(f"latents must be B×T×{channels}×h×w for this transformer, got {tuple(x_t.shape)}")
        out = self.denoiser(
            hidden_states=x_t, encoder_hidden_states=cond["prompt_embeds"], timestep=t,
            image_rotary_emb=self._rotary_embeddings(x_t), return_dict=False,
        )[0]
        return out.float()  # the pipeline mixes CFG branches in float32

    # ----------------------------------------------------------------- latents
    def prepare_latents(
        self, batch_size: int, generator: Generator = None, height: int | None = None,
        width: int | None = None, num_frames: int | None = None,
    ) -> torch.Tensor:
        config = self.trainable_denoiser.config
        spatial = self.pipe.vae_scale_factor_spatial
        height = height or config.sample_height * spatial
        width = width or config.sample_width * spatial
        num_frames = num_frames or config.sample_frames
        if height % spatial or width % spatial:
            raise AdapterError(f"height and width must be divisible by {spatial}, got {height}×{width}")
        latent_frames = (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
        if config.patch_size_t is not None and latent_frames % config.patch_size_t:
            raise AdapterError(
                f"num_frames={num_frames} gives {latent_frames} latent frames, not divisible by patch_size_t="
                f"{config.patch_size_t}; choose num_frames so that (num_frames - 1) // "
                f"{self.pipe.vae_scale_factor_temporal} + 1 is a multiple of it"
            )
        return self.pipe.prepare_latents(
            batch_size, config.in_channels, num_frames, height, width, self.dtype, self.device, generator
        )

    # --------------------------------------------------------------------- VAE
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        z = latents.to(vae.dtype).permute(0, 2, 1, 3, 4) / vae.config.scaling_factor  # B×C×T×h×w
        video = vae.decode(z).sample.permute(0, 2, 1, 3, 4)  # B×T×3×H×W
        return (video.float() / 2 + 0.5).clamp(0, 1)

    def encode(self, media: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        """Videos ``B×T×3×H×W`` in [0, 1] -> scaled latents; posterior mean without a generator."""
        if media.ndim != 5 or media.shape[2] != 3:
            raise AdapterError(f"media must be videos B×T×3×H×W in [0, 1], got {tuple(media.shape)}")
        vae = self.pipe.vae
        video = media.to(self.device, vae.dtype).permute(0, 2, 1, 3, 4) * 2 - 1
        posterior = vae.encode(video).latent_dist
        z = posterior.mode() if generator is None else posterior.sample(generator)
        return (z.permute(0, 2, 1, 3, 4) * vae.config.scaling_factor).to(self.dtype)
