"""Tiny text encoders with real tokenizers, shared by the tiny pipelines of every family.

* CLIP: the shipped BPE tokenizer (``assets/clip_tokenizer``) + a 2-layer ``CLIPTextModel``
  (or ``CLIPTextModelWithProjection`` for SDXL/SD3's second encoder).
* T5: a small unigram ``T5TokenizerFast`` built offline with ``tokenizers`` over a fixed word list
  + a 2-layer ``T5EncoderModel`` (or ``UMT5EncoderModel`` for Wan).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from diffalign.assets_path import tokenizer_path

WORDS = (
    "a an the photo of and left right above below on in with two three four five one red green blue yellow "
    "orange purple pink brown black white gray circle square triangle star cat dog car tree house person "
    "video running walking sunset city beach mountain small large big tiny bright dark"
).split()


def clip_tokenizer(path: Path) -> Path:
    shutil.copytree(tokenizer_path(), path, dirs_exist_ok=True)
    return path


def clip_text_encoder(
    path: Path, hidden: int = 32, layers: int = 2, heads: int = 4, projection_dim: int | None = None, seed: int = 0
) -> torch.nn.Module:
    """Save a tiny CLIP text encoder (with a text projection when ``projection_dim`` is set)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=projection_dim or hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    model = (CLIPTextModelWithProjection if projection_dim else CLIPTextModel)(config).eval()
    model.save_pretrained(path)
    return model


def t5_tokenizer(path: Path, extra_words: tuple[str, ...] = ()):
    """A small sentencepiece-style unigram ``T5TokenizerFast`` (the package's builder) saved to ``path``."""
    from diffalign.shapes.video_model import build_t5_tokenizer

    return build_t5_tokenizer((*WORDS, *extra_words), path)


def t5_text_encoder(path: Path, vocab_size: int, d_model: int = 32, layers: int = 2, heads: int = 4, umt5: bool = False, seed: int = 0):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // heads, d_ff=d_model * 2,
        num_layers=layers, num_heads=heads, relative_attention_num_buckets=8, decoder_start_token_id=0,
    )
    model = model_cls(config).eval()
    model.save_pretrained(path)
    return model
