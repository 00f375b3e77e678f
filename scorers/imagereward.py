"""ImageReward (Xu et al. 2023): a BLIP image-text encoder with a reward head, trained on human rankings.

    r(I, c) = (MLP(h_CLS(c | ViT(I))) − 0.16717362830052426) / 1.0333394966054072

``ViT`` is BLIP's ViT-L/16 at 224 px; the text ``c`` (BERT WordPiece, ``max_length=35`` with
truncation) passes through a BERT whose layers cross-attend to every ViT token; the [CLS] state
``h_CLS`` (768-d) goes through the affine MLP 768→1024→128→64→16→1; the constants standardise the
output (≈ N(0, 1) over the training data; SD-class images ≈ 0–1).

This module owns a BLIP-like model whose state-dict keys match the released ``ImageReward.pt``
(``THUDM/ImageReward``): the ViT is ``timm``'s ``VisionTransformer`` (BLIP's ViT uses timm's
naming), the text encoder is ``transformers``' ``BlipTextModel`` (a port of BLIP's BERT with
cross-attention whose key/value width follows the ViT width, run in bidirectional encoder mode).
Sizes are read from the checkpoint's tensor shapes and ``med_config.json``. Preprocessing: shortest
side 224 bicubic, centre crop, OpenAI CLIP mean/std, on tensors (differentiable, as ReFL needs).
"""
from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import torch
from torch import nn

from diffalign.scorers.aesthetic import AestheticMLP
from diffalign.scorers.base import Scorer, freeze, load_state_dict_file, register_scorer, resolve_dtype, resolve_file
from diffalign.scorers.preprocess import normalize, resize_center_crop

IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072


class BLIPRewardModel(nn.Module):
    """``blip.visual_encoder`` (ViT) + ``blip.text_encoder`` (BERT with cross-attention) + ``mlp``."""

    def __init__(self, vit: dict, text_config, embed_dim: int = 256):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.blip = nn.Module()
        self.blip.visual_encoder = VisionTransformer(
            img_size=vit["image_size"], patch_size=vit["patch_size"], embed_dim=vit["width"], depth=vit["layers"],
            num_heads=vit["heads"], mlp_ratio=vit.get("mlp_ratio", 4.0), qkv_bias=True, num_classes=0,
            global_pool="", norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        from transformers import BlipTextModel

        self.blip.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        # kept so the checkpoint loads strictly; ImageReward's score does not use them
        self.blip.vision_proj = nn.Linear(vit["width"], embed_dim)
        self.blip.text_proj = nn.Linear(text_config.hidden_size, embed_dim)
        self.mlp = AestheticMLP(text_config.hidden_size)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.blip.visual_encoder.forward_features(pixels)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.blip.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            is_decoder=False,
        )
        cls = text.last_hidden_state[:, 0].float()
        raw = self.mlp.float()(cls).squeeze(-1)
        return (raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


def vit_shape(state: dict[str, torch.Tensor], prefix: str = "blip.visual_encoder.", heads: int | None = None) -> dict:
    """ViT width/depth/patch/image size from the checkpoint's tensor shapes (BLIP uses 64-d heads)."""
    width = state[f"{prefix}cls_token"].shape[-1]
    patch = state[f"{prefix}patch_embed.proj.weight"].shape[-1]
    tokens = state[f"{prefix}pos_embed"].shape[1] - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"ViT position embeddings hold {tokens} patch tokens, not a square grid")
    depth = 1 + max(int(k[len(prefix) :].split(".")[1]) for k in state if k.startswith(f"{prefix}blocks."))
    mlp_ratio = state[f"{prefix}blocks.0.mlp.fc1.weight"].shape[0] / width
    return {"width": width, "patch_size": patch, "image_size": side * patch, "layers": depth,
            "heads": heads or max(1, width // 64), "mlp_ratio": mlp_ratio}


def text_config_from_med(med_config: dict, encoder_width: int):
    """BLIP's ``med_config.json`` -> ``BlipTextConfig``; the cross-attention width is the ViT width
    (BLIP overrides the file's ``encoder_width`` with it)."""
    from transformers import BlipTextConfig

    return BlipTextConfig(
        vocab_size=med_config["vocab_size"],
        hidden_size=med_config["hidden_size"],
        encoder_hidden_size=encoder_width,
        intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0),
        bos_token_id=med_config["vocab_size"] - 2,  # BLIP's added [DEC]; only used for generation
        eos_token_id=None,
        sep_token_id=None,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_decoder=True,  # builds the cross-attention layers; forward runs as a bidirectional encoder
    )


@register_scorer("imagereward")
class ImageReward(Scorer):
    """ImageReward score; see the module docstring.

    ``model``: ``THUDM/ImageReward`` (hub), a folder with ``ImageReward.pt`` and ``med_config.json``,
    or the ``.pt`` file itself (``med_config`` then names the config). ``tokenizer``: the BERT
    tokenizer (``bert-base-uncased`` hub id or folder).
    """

    name = "imagereward"
    differentiable = True
    batch_size = 16

    def __init__(
        self,
        model: str | Path = IMAGEREWARD_REPO,
        med_config: str | Path | None = None,
        tokenizer: str | Path = "bert-base-uncased",
        max_length: int = 35,
        vision_heads: int | None = None,
        device=None,
        dtype=None,
        batch_size: int | None = None,
        frame_stride: int = 1,
    ):
        super().__init__(batch_size=batch_size, frame_stride=frame_stride)
        from transformers import AutoTokenizer

        checkpoint = resolve_file(model, "ImageReward.pt")
        config_file = resolve_file(med_config or (Path(checkpoint).parent if Path(str(model)).exists() else model), "med_config.json")
        state = load_state_dict_file(checkpoint)
        state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
        vit = vit_shape(state, heads=vision_heads)
        text_config = text_config_from_med(json.loads(Path(config_file).read_text()), vit["width"])
        embed_dim = state["blip.vision_proj.weight"].shape[0] if "blip.vision_proj.weight" in state else 256
        self.model = BLIPRewardModel(vit, text_config, embed_dim)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{checkpoint} does not match ImageReward's layout: missing {missing[:5]}, unexpected {unexpected[:5]}")
        freeze(self.model, device, dtype)
        self.model.mlp.float()
        self.image_size = vit["image_size"]
        self.max_length = int(max_length)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        # BLIP adds these two tokens (ids after the BERT vocabulary); prompts never contain them
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        self._compute_dtype = resolve_dtype(dtype) or torch.float32

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = normalize(resize_center_crop(images.float(), self.image_size, "bicubic"))
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        return self.model(
            pixels.to(self._compute_dtype), tokens["input_ids"].to(pixels.device), tokens["attention_mask"].to(pixels.device)
        )
