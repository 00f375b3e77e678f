"""Build the shipped CLIP BPE tokenizer offline from the merges file inside ``open_clip_torch``.

The result in ``assets/clip_tokenizer`` loads with ``transformers.CLIPTokenizer.from_pretrained``
and tokenizes exactly as ``open_clip.tokenize`` (same 49408-token vocabulary and start/end tokens).
Padding uses ``<|endoftext|>`` as Stable Diffusion 1.x tokenizers do (open_clip pads with id 0; ``"!"``
as a pad token would be split out of prompts such as ``"!!"``). Regenerate with
``python -m diffalign.tokenizer``.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from diffalign.assets_path import tokenizer_path

CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # as in the original CLIP BPE


def _open_clip_merges_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise RuntimeError("open_clip_torch is not installed; it ships the CLIP BPE merges file")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise RuntimeError(f"{path} not found in the installed open_clip_torch")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def build_clip_tokenizer(out_dir: str | Path | None = None) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs to ``out_dir``."""
    out = Path(out_dir) if out_dir is not None else tokenizer_path()
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_open_clip_merges_file()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_symbols = list(_bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CONTEXT_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


def load_clip_tokenizer(path: str | Path | None = None):
    """The shipped tokenizer as a ``transformers.CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path or tokenizer_path()))


if __name__ == "__main__":
    print(build_clip_tokenizer())
