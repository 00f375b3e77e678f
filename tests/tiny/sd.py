"""Tiny Stable Diffusion 1.5 (epsilon), 2.x (v-prediction) and SDXL pipelines (8×8 latents, 16×16 images)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .text import clip_text_encoder, clip_tokenizer

LATENT_SIZE = 8


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, layers_per_block=1, sample_size=2 * LATENT_SIZE,
    )


def _ddim(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    # the Stable Diffusion scheduler settings
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )


def _unet(cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4), norm_num_groups=32, **extra,
    )


def _save_sd(path: Path, prediction_type: str, **unet_extra) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:  # parts are written once, then saved as one pipeline
        scratch = Path(scratch)
        pipe = StableDiffusionPipeline(
            vae=_vae(), text_encoder=clip_text_encoder(scratch / "text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(clip_tokenizer(scratch / "tokenizer")),
            unet=_unet(32, **unet_extra), scheduler=_ddim(prediction_type),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(path)


def build_sd15(path: Path) -> None:
    _save_sd(path, "epsilon")


def build_sd2_v(path: Path) -> None:
    _save_sd(path, "v_prediction", use_linear_projection=True)


def build_sdxl(path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer(scratch / "tokenizer"))
        encoder = clip_text_encoder(scratch / "text_encoder", seed=0)
        encoder_2 = clip_text_encoder(scratch / "text_encoder_2", projection_dim=32, seed=1)
    time_embed_dim = 8
    unet = _unet(
        64,  # penultimate hidden states of both encoders, concatenated
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + 32, use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=_ddim(), force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(path)
