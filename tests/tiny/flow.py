"""Tiny rectified-flow image pipelines: SD3 (MMDiT; CLIP-L + CLIP-G + T5) and FLUX (guidance-distilled)."""
from __future__ import annotations

from pathlib import Path

import torch

from . import text


def image_vae(latent_channels: int, seed: int = 0):
    """A 2-level KL autoencoder (scale factor 2) with SD3/FLUX-style scaling and shift factors."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def build_sd3(path: Path) -> None:
    """SD3-style pipeline: two CLIP encoders with projections (pooled 2×32) + T5 (64), static shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer

    path = Path(path)
    clip_hidden, projection, t5_dim = 32, 32, 64
    tokenizer_3 = text.t5_tokenizer(path / "tokenizer_3")
    torch.manual_seed(4)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=t5_dim,
        caption_projection_dim=32,
        pooled_projection_dim=2 * projection,
        pos_embed_max_size=32,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=image_vae(latent_channels=4, seed=5),
        text_encoder=text.clip_text_encoder(path / "text_encoder", hidden=clip_hidden, projection_dim=projection, seed=1),
        tokenizer=CLIPTokenizer.from_pretrained(text.clip_tokenizer(path / "tokenizer")),
        text_encoder_2=text.clip_text_encoder(path / "text_encoder_2", hidden=clip_hidden, projection_dim=projection, seed=2),
        tokenizer_2=CLIPTokenizer.from_pretrained(text.clip_tokenizer(path / "tokenizer_2")),
        text_encoder_3=text.t5_text_encoder(path / "text_encoder_3", vocab_size=len(tokenizer_3), d_model=t5_dim, seed=3),
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(path)


def build_flux(path: Path) -> None:
    """FLUX.1-dev-style pipeline: CLIP pooled (32) + T5 sequence (32), guidance embedding, dynamic shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizer

    path = Path(path)
    latent_channels, clip_hidden, t5_dim = 4, 32, 32
    tokenizer_2 = text.t5_tokenizer(path / "tokenizer_2")
    torch.manual_seed(4)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2×2 packed latents
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        pooled_projection_dim=clip_hidden,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=image_vae(latent_channels=latent_channels, seed=5),
        text_encoder=text.clip_text_encoder(path / "text_encoder", hidden=clip_hidden, seed=1),
        tokenizer=CLIPTokenizer.from_pretrained(text.clip_tokenizer(path / "tokenizer")),
        text_encoder_2=text.t5_text_encoder(path / "text_encoder_2", vocab_size=len(tokenizer_2), d_model=t5_dim, seed=2),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(path)
