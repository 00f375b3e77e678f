"""Tiny random checkpoints of VBench's models, laid out as the real ones, for offline tests.

* ``dino_vit``: a ``transformers.ViTModel`` folder of ``facebook/dino-vitb16``'s architecture
  (patch 16, 224 px, no pooler), scaled down.
* ``raft_weights``: a random torchvision ``raft_large`` state dict saved like
  ``raft_large_C_T_V1-22a6c225.pth``.
* ``musiq_weights``: a random pyiqa ``MUSIQ`` state dict (``TINY_MUSIQ`` architecture) as a ``.pth``.
* ``ColourBlobDetector`` / ``colour_of``: a detector (the ``diffalign.eval.detection.Detector``
  protocol) and colour classifier whose answers are known on synthetic videos of coloured squares.
"""
from __future__ import annotations

from pathlib import Path

import torch

from diffalign.eval.detection import Detection

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


class ColourBlobDetector:
    """Finds saturated red ("car") and blue ("bicycle") pixels; adds a low-score "dog" everywhere."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        out = []
        for image in images:
            found = {"dog": [Detection((0, 0, 4, 4), 0.4)]}  # below GRiT's 0.5: never counted
            for name, channel in (("car", 0), ("bicycle", 2)):
                others = [c for c in range(3) if c != channel]
                mask = (image[channel] > 0.8) & (image[others] < 0.2).all(0)
                if mask.any():
                    ys, xs = torch.nonzero(mask, as_tuple=True)
                    found[name] = [Detection((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), 0.9)]
            out.append(found)
        return out


def colour_of(image, detections, classname):
    names = []
    for d in detections:
        x0, y0, x1, y1 = (int(v) for v in d.box)
        mean = image[:, y0:y1, x0:x1].mean((1, 2))
        names.append(["red", "green", "blue"][int(mean.argmax())])
    return names
