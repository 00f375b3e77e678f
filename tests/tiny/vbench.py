"""Tiny random checkpoints of VBench's models, laid out as the real ones, for offline tests.

* ``dino_vit``: a ``transformers.ViTModel`` folder of ``facebook/dino-vitb16``'s architecture
  (patch 16, 224 px, no pooler), scaled down.
* ``raft_weights``: a random torchvision ``raft_large`` state dict saved like
  ``raft_large_C_T_V1-22a6c225.pth``.
* ``musiq_weights``: a random pyiqa ``MUSIQ`` state dict (``TINY_MUSIQ`` architecture) as a ``.pth``.
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY_MUSIQ = {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 1}


def dino_vit(path: Path, seed: int = 0) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                       image_size=224, patch_size=16, layer_norm_eps=1e-6)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(path)
    return path


def raft_weights(path: Path, seed: int = 0) -> Path:
    from torchvision.models.optical_flow import raft_large

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(raft_large(weights=None).state_dict(), path)
    return path


def musiq_weights(path: Path, seed: int = 0) -> Path:
    from pyiqa.archs.musiq_arch import MUSIQ

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(MUSIQ(pretrained=False, **TINY_MUSIQ).state_dict(), path)
    return path
