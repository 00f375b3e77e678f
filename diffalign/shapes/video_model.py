"""Architecture of ``shapes-video``, the ShapesWorld text-to-video model, as a stock Wan 2.1 pipeline.

:class:`~diffusers.WanPipeline` = a small :class:`~diffusers.AutoencoderKLWan` (the causal 3D VAE:
9 frames of 32×32 RGB <-> 16×3×8×8 latents, time ×4 and space ×4) + a small
:class:`~transformers.UMT5EncoderModel` on a word-level ``T5TokenizerFast`` of the motion world's
vocabulary + a small :class:`~diffusers.WanTransformer3DModel` (rectified flow) +
:class:`~diffusers.FlowMatchEulerDiscreteScheduler`.

Wan was chosen over CogVideoX for this CPU: CogVideoX attends jointly over its 226 text tokens and
the video tokens, Wan cross-attends to the text, so a step costs a fraction.

Loading with stock diffusers: ``WanPipeline.from_pretrained(path)``; call it with the settings of
``diffalign_defaults.json`` (``num_frames=9, height=32, width=32, max_sequence_length=32``): the model
was trained on 32 text positions, not the pipeline's default 512 (``diffalign.pipelines.load`` reads
them from that file).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from . import motion, world

#: every word of the motion world's captions; other words fall back to single letters
VIDEO_WORDS: tuple[str, ...] = (
    "a", "an", "and", "the", "to", "moving", "still", *motion.DIRECTIONS, *world.COLORS, *world.SHAPES,
)
VIDEO_FRAMES = 9  # Wan's causal VAE takes 4k + 1 frames
VIDEO_FPS = 8
TEXT_TOKENS = 32  # longest caption: 13 tokens with </s>
SHIPPED_NAME = "shapes-video"


@dataclass(frozen=True)
class VideoModelSizes:
    """Every size of ``shapes-video``; :data:`DEFAULT_VIDEO_SIZES` ships, :data:`TINY_VIDEO_SIZES` is for tests."""

    image_size: int = world.IMAGE_SIZE
    frames: int = VIDEO_FRAMES
    vae_base_dim: int = 16
    vae_dim_mult: tuple[int, ...] = (1, 2, 2)  # two downsamplings: space ×4
    vae_temporal_downsample: tuple[bool, ...] = (True, True)  # time ×4
    latent_channels: int = 16
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    ffn_dim: int = 256
    patch: int = 2

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_VIDEO_SIZES = VideoModelSizes()
TINY_VIDEO_SIZES = VideoModelSizes(vae_base_dim=8, latent_channels=8, text_dim=16, layers=1, heads=2, head_dim=8, ffn_dim=32)

#: default sampling settings (``diffalign_defaults.json``)
DEFAULT_VIDEO_SAMPLING: dict[str, Any] = {
    "num_inference_steps": 20, "guidance_scale": 4.0, "num_frames": VIDEO_FRAMES, "fps": VIDEO_FPS,
    "max_sequence_length": TEXT_TOKENS,
}


def build_t5_tokenizer(words: Sequence[str] = VIDEO_WORDS, path: str | Path | None = None):
    """A sentencepiece-style unigram ``T5TokenizerFast`` with one piece per word (letters and digits as fallback).

    Built offline with ``tokenizers``: the released T5 vocabulary cannot be downloaded here, and 32k
    pieces would be most of a 20 MB model. Saved to ``path`` when given.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>"] + ["▁" + w for w in dict.fromkeys(words)]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["▁"] + list("0123456789.,!?'-")
    # whole words score above letters, so a known word is always one piece
    vocab = [(p, 0.0 if i < 3 else -float(len(p) < 3) - 1.0) for i, p in enumerate(pieces)]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)
    tokenizer.model_max_length = 512
    if path is not None:
        tokenizer.save_pretrained(str(path))
    return tokenizer


def build_video_text_encoder(sizes: VideoModelSizes, vocab_size: int) -> torch.nn.Module:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=sizes.text_dim, d_kv=sizes.text_dim // sizes.text_heads, d_ff=sizes.text_dim * 2,
        num_layers=sizes.text_layers, num_heads=sizes.text_heads, relative_attention_num_buckets=8, decoder_start_token_id=0,
        dropout_rate=0.0,  # no global-RNG draws: a resumed run ends with the uninterrupted weights
    )
    return UMT5EncoderModel(config)


def build_video_autoencoder(sizes: VideoModelSizes) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    if len(sizes.vae_temporal_downsample) != len(sizes.vae_dim_mult) - 1:
        raise ValueError("vae_temporal_downsample needs one entry per downsampling (len(vae_dim_mult) - 1)")
    return AutoencoderKLWan(
        base_dim=sizes.vae_base_dim, z_dim=sizes.latent_channels, dim_mult=list(sizes.vae_dim_mult), num_res_blocks=1,
        attn_scales=[], temperal_downsample=list(sizes.vae_temporal_downsample),
        latents_mean=[0.0] * sizes.latent_channels, latents_std=[1.0] * sizes.latent_channels,
        # WanPipeline reads the factors from the config, not the architecture
        scale_factor_temporal=2 ** sum(sizes.vae_temporal_downsample), scale_factor_spatial=2 ** (len(sizes.vae_dim_mult) - 1),
    )


def build_video_transformer(sizes: VideoModelSizes) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, sizes.patch, sizes.patch), num_attention_heads=sizes.heads, attention_head_dim=sizes.head_dim,
        in_channels=sizes.latent_channels, out_channels=sizes.latent_channels, text_dim=sizes.text_dim,
        freq_dim=64, ffn_dim=sizes.ffn_dim, num_layers=sizes.layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )


def build_video_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def assemble_video_pipeline(vae, text_encoder, transformer, tokenizer):
    from diffusers import WanPipeline

    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=build_video_scheduler())


def set_latent_stats(vae, latents: torch.Tensor) -> None:
    """Per-channel mean and std of unnormalised VAE latents ``N×C×T×h×w`` into the config the pipeline reads."""
    channels = latents.transpose(0, 1).flatten(1)
    vae.register_to_config(latents_mean=channels.mean(dim=1).tolist(), latents_std=channels.std(dim=1).clamp_min(1e-4).tolist())


def normalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """The pipeline's latent convention: ``(z - mean) / std`` per channel (``WanPipeline`` decodes ``z * std + mean``)."""
    mean = torch.tensor(vae.config.latents_mean, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1, 1)
    return (latents - mean) / std


#: keys of ``diffalign_defaults.json`` that are not ``WanPipeline.__call__`` arguments (``fps`` is for writing files)
_FILE_ONLY_DEFAULTS = ("fps",)


def stock_call_kwargs(defaults: dict[str, Any]) -> dict[str, Any]:
    """The defaults file's settings that a stock ``WanPipeline(...)`` call takes."""
    return {k: v for k, v in defaults.items() if k not in _FILE_ONLY_DEFAULTS}


def video_defaults(sizes: VideoModelSizes) -> dict[str, Any]:
    return {"height": sizes.image_size, "width": sizes.image_size, **DEFAULT_VIDEO_SAMPLING, "num_frames": sizes.frames}
