"""Tiny random scorer checkpoints laid out exactly as the real ones, for offline tests.

* ``hf_clip``: a ``transformers.CLIPModel`` folder (``config.json`` + safetensors) with the shipped
  CLIP BPE tokenizer and a ``CLIPImageProcessor`` config, like ``openai/clip-vit-large-patch14``.
  ``with_processor=False`` leaves the tokenizer/processor out, like ``yuvalkirstain/PickScore_v1``.
* ``open_clip_folder``: ``open_clip_config.json`` (+ ``open_clip_model.safetensors``), the layout of
  open_clip's ``hf-hub:`` repositories.
* ``hps_checkpoint``: ``{"state_dict": open_clip state dict}`` saved with ``torch.save`` like
  ``HPS_v2.1_compressed.pt``.
* ``aesthetic_head``: the improved-aesthetic-predictor MLP (``layers.{0,2,4,6,7}``) or the v1 linear
  head (``weight``/``bias``) as a ``.pth`` state dict.
* ``imagereward``: ``ImageReward.pt`` (flat state dict under ``blip.visual_encoder.*``,
  ``blip.text_encoder.*``, ``blip.vision_proj/text_proj``, ``mlp.layers.*``) + ``med_config.json``,
  and a BERT WordPiece tokenizer folder. The key names and shapes are written out here from the
  released layout (BLIP ViT in timm naming, BLIP's BERT with cross-attention), independently of
  the code under test.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.tiny.text import WORDS, clip_tokenizer

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def hf_clip(
    path: Path,
    image_size: int = 64,
    patch_size: int = 16,
    projection_dim: int = 16,
    logit_scale: float | None = None,
    with_processor: bool = True,
    seed: int = 0,
) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=patch_size,
        ),
        projection_dim=projection_dim,
    )
    model = CLIPModel(config).eval()
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if with_processor:
        clip_processor(path, image_size)
    return path


def clip_processor(path: Path, image_size: int = 64) -> Path:
    """The shipped CLIP tokenizer + a ``CLIPImageProcessor`` config (shortest edge, centre crop, OpenAI stats)."""
    from transformers import CLIPImageProcessor

    clip_tokenizer(path)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def open_clip_folder(path: Path, with_weights: bool = True, seed: int = 0) -> Path:
    import open_clip
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP_CFG, "preprocess_cfg": preprocess}, indent=2))
    if with_weights:
        torch.manual_seed(seed)
        model = open_clip.create_model(f"local-dir:{path}", load_weights=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


def hps_checkpoint(path: Path, arch_folder: Path, seed: int = 1) -> Path:
    """A random open_clip model of ``arch_folder``'s config saved as ``{"state_dict": ...}``."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{arch_folder}", load_weights=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def aesthetic_head(path: Path, input_size: int = 16, version: str = "v2", seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)

    def linear(prefix: str, fan_in: int, fan_out: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}weight": torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5,
            f"{prefix}bias": torch.randn(fan_out, generator=generator) * 0.1,
        }

    if version == "v2":  # Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear
        state = {}
        for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), [(input_size, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]):
            state.update(linear(f"layers.{index}.", fan_in, fan_out))
    elif version == "v1":
        state = linear("", input_size, 1)
    else:
        raise ValueError(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


BERT_SPECIAL = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_tokenizer(path: Path) -> Path:
    """A WordPiece vocabulary over the test words, saved as a ``BertTokenizer`` folder."""
    from transformers import BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = BERT_SPECIAL + list(dict.fromkeys(WORDS)) + letters + ["##" + c for c in letters] + list(".,!?'-0123456789")
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    return path


def imagereward(
    path: Path,
    tokenizer_path: Path,
    vision_width: int = 64,
    vision_layers: int = 2,
    patch_size: int = 16,
    image_size: int = 32,
    text_width: int = 32,
    text_layers: int = 2,
    text_heads: int = 4,
    seed: int = 0,
) -> Path:
    """``ImageReward.pt`` + ``med_config.json`` in ``path``; returns ``path``."""
    bert_tokenizer(tokenizer_path)
    vocab_size = len((tokenizer_path / "vocab.txt").read_text().split()) + 2  # + [DEC] and [ENC]
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def rand(*shape, std=0.05):
        return torch.randn(*shape, generator=generator) * std

    def linear(prefix, fan_in, fan_out):
        state[f"{prefix}.weight"] = rand(fan_out, fan_in, std=fan_in**-0.5)
        state[f"{prefix}.bias"] = rand(fan_out, std=0.02)

    def layer_norm(prefix, width):
        state[f"{prefix}.weight"] = 1 + rand(width, std=0.1)
        state[f"{prefix}.bias"] = rand(width, std=0.1)

    # BLIP ViT (timm naming)
    v, patches = vision_width, (image_size // patch_size) ** 2
    prefix = "blip.visual_encoder"
    state[f"{prefix}.cls_token"] = rand(1, 1, v, std=0.02)
    state[f"{prefix}.pos_embed"] = rand(1, patches + 1, v, std=0.02)
    state[f"{prefix}.patch_embed.proj.weight"] = rand(v, 3, patch_size, patch_size, std=(3 * patch_size**2) ** -0.5)
    state[f"{prefix}.patch_embed.proj.bias"] = rand(v, std=0.02)
    for i in range(vision_layers):
        block = f"{prefix}.blocks.{i}"
        layer_norm(f"{block}.norm1", v)
        linear(f"{block}.attn.qkv", v, 3 * v)
        linear(f"{block}.attn.proj", v, v)
        layer_norm(f"{block}.norm2", v)
        linear(f"{block}.mlp.fc1", v, 4 * v)
        linear(f"{block}.mlp.fc2", 4 * v, v)
    layer_norm(f"{prefix}.norm", v)

    # BLIP BERT with cross-attention (no token-type embeddings, no pooler)
    h, prefix = text_width, "blip.text_encoder"
    state[f"{prefix}.embeddings.position_ids"] = torch.arange(512)[None]
    state[f"{prefix}.embeddings.word_embeddings.weight"] = rand(vocab_size, h, std=0.5)
    state[f"{prefix}.embeddings.position_embeddings.weight"] = rand(512, h, std=0.1)
    layer_norm(f"{prefix}.embeddings.LayerNorm", h)
    for i in range(text_layers):
        layer = f"{prefix}.encoder.layer.{i}"
        for attention, kv_width in (("attention", h), ("crossattention", v)):
            linear(f"{layer}.{attention}.self.query", h, h)
            linear(f"{layer}.{attention}.self.key", kv_width, h)
            linear(f"{layer}.{attention}.self.value", kv_width, h)
            linear(f"{layer}.{attention}.output.dense", h, h)
            layer_norm(f"{layer}.{attention}.output.LayerNorm", h)
        linear(f"{layer}.intermediate.dense", h, 4 * h)
        linear(f"{layer}.output.dense", 4 * h, h)
        layer_norm(f"{layer}.output.LayerNorm", h)
    linear("blip.vision_proj", v, 256)
    linear("blip.text_proj", h, 256)
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), [(h, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]):
        linear(f"mlp.layers.{index}", fan_in, fan_out)

    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "ImageReward.pt")
    med_config = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": h, "initializer_range": 0.02, "intermediate_size": 4 * h,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
        "num_attention_heads": text_heads, "num_hidden_layers": text_layers, "pad_token_id": 0,
        "type_vocab_size": 2, "vocab_size": vocab_size, "encoder_width": h, "add_cross_attention": True,
    }
    (path / "med_config.json").write_text(json.dumps(med_config, indent=2))
    return path
