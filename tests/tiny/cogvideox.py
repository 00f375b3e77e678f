"""Tiny CogVideoX pipeline: 9-frame 16×16 videos (3×4×4 latents), T5 text, rotary positions."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .text import t5_text_encoder, t5_tokenizer


def build_cogvideox(path: Path) -> None:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        t5_tokenizer(scratch / "tokenizer")
        tokenizer = T5TokenizerFast.from_pretrained(scratch / "tokenizer")
        text_encoder = t5_text_encoder(scratch / "text_encoder", vocab_size=len(tokenizer))
        torch.manual_seed(0)
        vae = AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
            block_out_channels=(8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
            temporal_compression_ratio=4, sample_height=16, sample_width=16,
        )
        torch.manual_seed(0)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
            text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=226, use_rotary_positional_embeddings=True,
        )
        # the CogVideoX-2b scheduler settings
        scheduler = CogVideoXDDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
            prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
            snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing",
        )
        pipe = CogVideoXPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )
        pipe.save_pretrained(path)
