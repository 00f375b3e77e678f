"""Tiny Wan 2.1 text-to-video pipeline: UMT5 encoder, 3D causal VAE (×4 time, ×8 space), Euler flow scheduler."""
from __future__ import annotations

from pathlib import Path

import torch

from . import text


def build_wan(path: Path) -> None:
    """Wan-style pipeline. The releases ship UniPC with ``flow_shift``; the tiny model uses
    ``FlowMatchEulerDiscreteScheduler(shift=3)`` so the stock pipeline and the adapter run the same sampler."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    path = Path(path)
    text_dim = 32
    tokenizer = text.t5_tokenizer(path / "tokenizer")
    torch.manual_seed(3)
    # base_dim 8: a 3-channel base decodes almost every latent to flat grey, hiding what the sampler did
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    torch.manual_seed(4)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text.t5_text_encoder(path / "text_encoder", vocab_size=len(tokenizer), d_model=text_dim, umt5=True, seed=2),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )
    pipe.save_pretrained(path)
