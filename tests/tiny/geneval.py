"""Tiny random GenEval models: a Mask2Former (tiny Swin backbone, 80 COCO classes) saved with
``save_pretrained``, loaded back through ``Mask2FormerForUniversalSegmentation.from_pretrained``."""
from __future__ import annotations

from pathlib import Path

import torch

GENEVAL_CLASSES = 80


def mask2former(path: Path, num_queries: int = 12, seed: int = 0, confident_class: int | None = None) -> Path:
    """``confident_class``: raise that class's logit so every query predicts it (scores above GenEval's
    thresholds, so the rules have objects to count); otherwise scores stay near 1/81."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(seed)
    backbone = SwinConfig(
        image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64, num_queries=num_queries,
        id2label={i: f"class {i}" for i in range(GENEVAL_CLASSES)},
    )
    model = Mask2FormerForUniversalSegmentation(config).eval()
    if confident_class is not None:
        with torch.no_grad():
            model.class_predictor.bias[confident_class] += 15.0
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path
