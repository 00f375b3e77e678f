"""A tiny Qwen2-VL (random weights) with an offline-built tokenizer and the real processors.

The folder it writes looks like a hub checkpoint (``config.json``, safetensors weights,
``tokenizer.json``, ``preprocessor_config.json``, ``video_preprocessor_config.json``,
``chat_template.jinja``), so tests load it through ``AutoProcessor`` and
``AutoModelForImageTextToText.from_pretrained(path)`` exactly as a user loads
``Qwen/Qwen2-VL-2B-Instruct``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

#: Qwen's special tokens, in the order they follow the text vocabulary in the real tokenizer.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Words the tiny BPE learns as whole tokens (the critic's answer words among them).
CORPUS_WORDS = (
    "Yes No A B yes no system user assistant You are a helpful assistant image video picture "
    "Does this match the prompt Answer with Which of two images is better first second only "
    "or and of good quality looks red blue green cat dog photo"
).split()

#: The Qwen2-VL chat template, reduced to what the critic uses (text and image/video parts).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer(path: Path):
    """Train a small byte-level BPE offline and save it as a ``Qwen2Tokenizer`` with Qwen's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False, special_tokens=[]
    )
    corpus = [" ".join(CORPUS_WORDS)] * 4 + CORPUS_WORDS * 4
    backend.train_from_iterator(corpus, trainer=trainer)
    vocab = backend.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(backend.to_str())["model"]["merges"]]
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    tokenizer.save_pretrained(path)
    return tokenizer


def build_qwen2_vl(path: Path, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0, version: str = "2") -> Path:
    """Write a tiny Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``) checkpoint folder to ``path``."""
    import transformers
    from transformers import AutoProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    if version not in ("2", "2.5"):
        raise ValueError(f"version must be '2' or '2.5', got {version!r}")
    prefix = "Qwen2VL" if version == "2" else "Qwen2_5_VL"
    config_cls = getattr(transformers, f"{prefix}Config")
    model_cls = getattr(transformers, f"{prefix}ForConditionalGeneration")
    processor_cls = getattr(transformers, f"{prefix}Processor")

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_tokenizer(path)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    head_dim = hidden // heads
    vision = dict(depth=2, hidden_size=hidden, num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        vision.update(embed_dim=32, mlp_ratio=2)
    else:  # Qwen2.5-VL: window attention except in the full-attention blocks, SwiGLU MLP
        vision.update(intermediate_size=hidden * 2, out_hidden_size=hidden, window_size=56, fullatt_block_indexes=[1])
    config = config_cls(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads // 2,
            max_position_embeddings=2048,
            # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width)
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            initializer_range=0.3,  # larger than the real 0.02 so answer logits differ visibly between inputs
        ),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(path)
    # small pixel budgets keep the vision sequence short: 56x56 -> 4x4 patches -> 4 merged tokens
    pixels = dict(min_pixels=28 * 28, max_pixels=56 * 56)
    processor = processor_cls(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=True),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    AutoProcessor.from_pretrained(path)  # fail here, not in the test, if the folder does not load back
    return path
