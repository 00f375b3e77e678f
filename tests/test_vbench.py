"""VBench harness: each dimension against VBench's formula recomputed here, orderings on synthetic
videos, the aggregation against a hand computation, unavailable dimensions, resume and the CLI.

The reference computations below follow VBench's code path step by step (torchvision transforms
composed as VBench composes them, one frame at a time where VBench loops, RAFT's padder written
out); the harness batches and vectorises, so agreement checks the preprocessing and the formulas.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffalign.eval.detection import Detection
from diffalign.eval.vbench import (
    DIMENSION_BOUNDS, DimensionUnavailable, ModelOptions, VBenchError, VBenchPrompt, Video, aggregate, build_dimensions,
    evaluate_videos, generate_videos, load_suite,
)
from diffalign.eval.vbench import dimensions as dims
from diffalign.media import save_video
from tests.tiny.scorers import aesthetic_head, hf_clip
from tests.tiny.vbench import TINY_MUSIQ, ColourBlobDetector, colour_of, dino_vit, musiq_weights, raft_weights

HAS_PYIQA = importlib.util.find_spec("pyiqa") is not None
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vbench-models")
    paths = {
        "dino": dino_vit(root / "dino"),
        "clip": hf_clip(root / "clip", image_size=224, patch_size=32),
        "head": aesthetic_head(root / "sa_0_4_vit_l_14_linear.pth", input_size=16, version="v1"),
        "raft": raft_weights(root / "raft_large_C_T_V1-22a6c225.pth"),
    }
    if HAS_PYIQA:
        paths["musiq"] = musiq_weights(root / "musiq_spaq_ckpt-358bb6af.pth")
    return paths


def options(models, **extra) -> ModelOptions:
    chosen = dict(dino=str(models["dino"]), clip_b32=str(models["clip"]), clip_l14=str(models["clip"]),
                  aesthetic_head=str(models["head"]), raft_weights=str(models["raft"]),
                  musiq_weights=str(models.get("musiq", "")) or None, musiq_architecture=TINY_MUSIQ)
    return ModelOptions(**{**chosen, **extra})


def random_video(frames=5, height=48, width=80, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, 3, height, width), generator=generator, dtype=torch.uint8)


def square_video(frames=6, height=48, width=80, step=0, color=(230, 20, 20), recolor_at=None, size=16) -> torch.Tensor:
    """A grey scene with a coloured square moving ``step`` px per frame (recoloured blue at ``recolor_at``)."""
    video = torch.full((frames, 3, height, width), 120, dtype=torch.uint8)
    for t in range(frames):
        x = 4 + t * step
        rgb = (20, 20, 230) if recolor_at is not None and t >= recolor_at else color
        video[t, :, 12 : 12 + size, x : x + size] = torch.tensor(rgb, dtype=torch.uint8)[:, None, None]
    return video


def vbench_pairs(features: list[torch.Tensor]) -> tuple[float, int]:
    """VBench's loop: f_i normalised; cur_sim = (max(0, cos(prev)) + max(0, cos(first))) / 2."""
    total, pairs = 0.0, 0
    first = former = None
    for i, feature in enumerate(features):
        feature = F.normalize(feature, dim=-1, p=2)
        if i == 0:
            first = feature
        else:
            sim_pre = max(0.0, F.cosine_similarity(former, feature).item())
            sim_fir = max(0.0, F.cosine_similarity(first, feature).item())
            total += (sim_pre + sim_fir) / 2
            pairs += 1
        former = feature
    return total, pairs


ITEM = VBenchPrompt("a test prompt", ["subject_consistency"])


# -- the suite ------------------------------------------------------------------------------
def test_suite_ships_the_official_prompts_with_licence():
    from diffalign.eval.vbench.suite import suite_path

    raw = json.loads(suite_path().read_text())
    assert len(raw) == 946
    suite = load_suite()
    assert len(suite) == 944  # two prompts serve two suites; their videos are shared
    counts = {d: sum(d in item.dimensions for item in suite) for d in DIMENSION_BOUNDS}
    assert counts["subject_consistency"] == 72 and counts["temporal_flickering"] == 75 and counts["human_action"] == 100
    assert "Apache License" in (suite_path().parent / "LICENSE").read_text()
    item = next(i for i in suite if i.prompt == "a red bicycle")
    assert item.video_name(3) == "a red bicycle-3.mp4" and item.auxiliary["color"] == {"color": "red"}


def test_bad_suite_file_is_named(tmp_path):
    bad = tmp_path / "full_info.json"
    bad.write_text(json.dumps([{"prompt_en": "", "dimension": ["color"]}]))
    with pytest.raises(VBenchError, match="entry 0 has no prompt_en"):
        load_suite(bad)
    with pytest.raises(VBenchError, match="not found"):
        load_suite(tmp_path / "missing.json")


# -- aggregation ----------------------------------------------------------------------------
FULL = {
    "subject_consistency": 0.96, "background_consistency": 0.95, "temporal_flickering": 0.97, "motion_smoothness": 0.98,
    "dynamic_degree": 0.6, "aesthetic_quality": 0.6, "imaging_quality": 0.65, "object_class": 0.85,
    "multiple_objects": 0.6, "human_action": 0.95, "color": 0.8, "spatial_relationship": 0.7, "scene": 0.5,
    "appearance_style": 0.24, "temporal_style": 0.25, "overall_consistency": 0.27,
}


def test_aggregate_equals_the_hand_computation():
    quality = ((0.96 - 0.1462) / 0.8538 + (0.95 - 0.2615) / 0.7385 + (0.97 - 0.6293) / 0.3707
               + (0.98 - 0.706) / 0.2915 + 0.5 * 0.6 + 0.6 + 0.65) / 6.5
    semantic = (0.85 + 0.6 + 0.95 + 0.8 + 0.7 + 0.5 / 0.8222 + (0.24 - 0.0009) / 0.2846 + 0.25 / 0.364 + 0.27 / 0.364) / 9
    result = aggregate(FULL)
    assert result["quality"] == pytest.approx(quality, abs=1e-12)
    assert result["semantic"] == pytest.approx(semantic, abs=1e-12)
    assert result["total"] == pytest.approx((4 * quality + semantic) / 5, abs=1e-12)
    assert result["partial"] is False and result["missing"] == []


def test_aggregate_marks_partial_results_and_rejects_bad_scores():
    some = {k: FULL[k] for k in ("subject_consistency", "dynamic_degree", "color")}
    result = aggregate(some)
    assert result["partial"] and "motion_smoothness" in result["missing"] and len(result["missing"]) == 13
    assert result["quality"] == pytest.approx(((0.96 - 0.1462) / 0.8538 + 0.5 * 0.6) / 1.5)
    assert result["semantic"] == pytest.approx(0.8)
    official = aggregate(some, missing_as_zero=True)  # cal_final_score.py counts missing as 0
    assert official["quality"] == pytest.approx(((0.96 - 0.1462) / 0.8538 + 0.5 * 0.6) / 6.5)
    assert official["semantic"] == pytest.approx(0.8 / 9)
    assert aggregate({"color": 0.5})["total"] is None
    with pytest.raises(ValueError, match="use underscores"):
        aggregate({"subject consistency": 0.9})
    with pytest.raises(ValueError, match="finite"):
        aggregate({"color": float("nan")})
    with pytest.raises(ValueError, match="percentages"):
        aggregate({"color": 96.5})


# -- model dimensions against VBench's computation -------------------------------------------
def test_subject_consistency_matches_vbench(models):
    from torchvision import transforms
    from transformers import ViTModel

    video = random_video()
    result = build_dimensions(["subject_consistency"], options(models))["subject_consistency"](Video(video), ITEM)
    model = ViTModel.from_pretrained(str(models["dino"]), add_pooling_layer=False).eval()
    dino_transform = transforms.Compose([
        transforms.Resize(size=224, antialias=False),
        transforms.Lambda(lambda x: x.float().div(255.0)),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    images = dino_transform(video)
    assert images.shape[-2:] == (224, 373)
    transformers_grid = model.embeddings.interpolate_pos_encoding(torch.zeros(1, 1 + 14 * 23, 32), 224, 373)
    model.embeddings.interpolate_pos_encoding = lambda x, height, width: dino_reference_pos_embed(model.embeddings.position_embeddings, height, width)
    assert not torch.allclose(transformers_grid, model.embeddings.interpolate_pos_encoding(None, 224, 373), atol=1e-6)
    with torch.no_grad():
        features = [model(pixel_values=image[None], interpolate_pos_encoding=True).last_hidden_state[:, 0] for image in images]
    total, pairs = vbench_pairs(features)
    assert result.count == pairs == 4
    assert result.total == pytest.approx(total, abs=1e-5)


def dino_reference_pos_embed(pos_embed: torch.Tensor, w: int, h: int, patch_size: int = 16) -> torch.Tensor:
    """facebookresearch/dino ``interpolate_pos_encoding`` (``w, h`` = dims 2, 3 of the input)."""
    N = pos_embed.shape[1] - 1
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch_size + 0.1, h // patch_size + 0.1
    patch_pos_embed = F.interpolate(
        pos_embed[:, 1:].reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    return torch.cat((pos_embed[:, :1], patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)), dim=1)


def test_subject_consistency_loads_the_original_dino_checkpoint(tmp_path):
    """A checkpoint in DINO's own layout (``blocks.i.attn.qkv`` fused, ``norm``; VBench's local
    ``dino_vitbase16_pretrain.pth``) gives the features of DINO's ViT, written out here: pre-norm
    blocks, fused qkv, exact GELU, layer-norm eps 1e-6, CLS token after the final norm."""
    generator = torch.Generator().manual_seed(3)
    dim, hidden, heads = 128, 64, 2

    def rand(*shape, scale=0.05):
        return torch.randn(*shape, generator=generator) * scale

    dino = {"cls_token": rand(1, 1, dim), "pos_embed": rand(1, 197, dim), "patch_embed.proj.weight": rand(dim, 3, 16, 16),
            "patch_embed.proj.bias": rand(dim), "norm.weight": 1 + rand(dim), "norm.bias": rand(dim),
            "blocks.0.norm1.weight": 1 + rand(dim), "blocks.0.norm1.bias": rand(dim), "blocks.0.attn.qkv.weight": rand(3 * dim, dim),
            "blocks.0.attn.qkv.bias": rand(3 * dim), "blocks.0.attn.proj.weight": rand(dim, dim), "blocks.0.attn.proj.bias": rand(dim),
            "blocks.0.norm2.weight": 1 + rand(dim), "blocks.0.norm2.bias": rand(dim), "blocks.0.mlp.fc1.weight": rand(hidden, dim),
            "blocks.0.mlp.fc1.bias": rand(hidden), "blocks.0.mlp.fc2.weight": rand(dim, hidden), "blocks.0.mlp.fc2.bias": rand(dim),
            "head.weight": rand(3, dim)}  # a full checkpoint's projection head is not part of the backbone
    torch.save(dino, tmp_path / "dino_vitbase16_pretrain.pth")
    video = random_video(frames=2, seed=9)
    features = dims.SubjectConsistency(tmp_path / "dino_vitbase16_pretrain.pth").features(video)

    d = dino
    x = dims.dino_pixels(video)
    tokens = F.conv2d(x, d["patch_embed.proj.weight"], d["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    tokens = torch.cat([d["cls_token"].expand(len(x), -1, -1), tokens], 1) + dino_reference_pos_embed(d["pos_embed"], *x.shape[-2:])
    h = F.layer_norm(tokens, (dim,), d["blocks.0.norm1.weight"], d["blocks.0.norm1.bias"], eps=1e-6)
    q, k, v = F.linear(h, d["blocks.0.attn.qkv.weight"], d["blocks.0.attn.qkv.bias"]).reshape(len(x), -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attention = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(-1) @ v
    tokens = tokens + F.linear(attention.transpose(1, 2).reshape(len(x), -1, dim), d["blocks.0.attn.proj.weight"], d["blocks.0.attn.proj.bias"])
    h = F.layer_norm(tokens, (dim,), d["blocks.0.norm2.weight"], d["blocks.0.norm2.bias"], eps=1e-6)
    tokens = tokens + F.linear(F.gelu(F.linear(h, d["blocks.0.mlp.fc1.weight"], d["blocks.0.mlp.fc1.bias"])), d["blocks.0.mlp.fc2.weight"], d["blocks.0.mlp.fc2.bias"])
    expected = F.layer_norm(tokens, (dim,), d["norm.weight"], d["norm.bias"], eps=1e-6)[:, 0]
    assert torch.allclose(features, expected, atol=1e-5)
    torch.save({"pos_embed": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(VBenchError, match="not a DINO"):
        dims.SubjectConsistency(tmp_path / "bad.pth")


def test_background_consistency_and_appearance_style_match_vbench(models):
    from PIL import Image
    from torchvision import transforms
    from transformers import AutoTokenizer, CLIPModel

    video = random_video(frames=4, height=80, width=48, seed=1)
    style_item = VBenchPrompt("a beach, Van Gogh style", ["appearance_style"], {"appearance_style": {"appearance_style": "Van Gogh style"}})
    built = build_dimensions(["background_consistency", "appearance_style"], options(models))
    background = built["background_consistency"](Video(video), ITEM)
    style = built["appearance_style"](Video(video), style_item)

    model = CLIPModel.from_pretrained(str(models["clip"])).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(models["clip"]))
    bicubic = transforms.InterpolationMode.BICUBIC
    clip_transform = transforms.Compose([
        transforms.Resize(224, interpolation=bicubic, antialias=False), transforms.CenterCrop(224),
        transforms.Lambda(lambda x: x.float().div(255.0)), transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    clip_transform_image = transforms.Compose([
        transforms.Resize(224, interpolation=bicubic), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    with torch.no_grad():
        embeds = model.get_image_features(pixel_values=clip_transform(video))
        embeds = embeds if isinstance(embeds, torch.Tensor) else embeds.pooler_output
        total, pairs = vbench_pairs(list(embeds[:, None]))
        text = tokenizer(["Van Gogh style"], return_tensors="pt")
        per_frame = []
        for frame in video.permute(0, 2, 3, 1).numpy():
            pixels = clip_transform_image(Image.fromarray(frame))[None]
            per_frame.append(float(model(input_ids=text["input_ids"], pixel_values=pixels).logits_per_text[0][0]) / 100)
    assert background.count == pairs == 3 and background.total == pytest.approx(total, abs=1e-5)
    assert style.count == 4 and style.total == pytest.approx(sum(per_frame), abs=1e-5)
    # the tensor (antialias=False) and PIL paths really differ: each dimension uses its own
    assert not torch.allclose(dims.clip_pixels(video), dims.clip_pixels_pil(video), atol=1e-3)


def test_aesthetic_quality_matches_vbench(models):
    from torchvision import transforms
    from transformers import CLIPModel

    video = random_video(frames=3, seed=2)
    result = build_dimensions(["aesthetic_quality"], options(models))["aesthetic_quality"](Video(video), ITEM)
    model = CLIPModel.from_pretrained(str(models["clip"])).eval()
    head = torch.load(models["head"], weights_only=True)
    clip_transform = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC, antialias=False), transforms.CenterCrop(224),
        transforms.Lambda(lambda x: x.float().div(255.0)), transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=clip_transform(video))
        feats = F.normalize(feats if isinstance(feats, torch.Tensor) else feats.pooler_output, dim=-1, p=2)
        scores = (feats @ head["weight"].T + head["bias"]).squeeze(-1) / 10
    assert result.count == 1 and result.total == pytest.approx(float(scores.mean()), abs=1e-6)


def test_temporal_flickering_matches_vbench_and_orders():
    video = random_video(frames=6, seed=3)
    frames = video.permute(0, 2, 3, 1).numpy()
    maes = [np.mean(np.abs(frames[i].astype(np.float32) - frames[i + 1].astype(np.float32))) for i in range(5)]
    result = dims.TemporalFlickering()(Video(video), ITEM)
    assert result.total == pytest.approx((255 - np.mean(maes)) / 255, abs=1e-9)
    still = dims.TemporalFlickering()(Video(square_video()), ITEM).total
    noise = dims.TemporalFlickering()(Video(square_video() ^ random_video(frames=6, seed=4) % 64), ITEM).total
    assert still == 1.0 and noise < still


def test_subject_consistency_drops_when_the_subject_changes_colour(models):
    subject = build_dimensions(["subject_consistency"], options(models))["subject_consistency"]
    steady = subject(Video(square_video()), ITEM).score
    changed = subject(Video(square_video(recolor_at=3)), ITEM).score
    assert steady == pytest.approx(1.0, abs=1e-6) and changed < steady - 1e-4


def vbench_padder(image: torch.Tensor) -> torch.Tensor:
    """RAFT's InputPadder (sintel mode), as written in RAFT's core/utils/utils.py."""
    ht, wd = image.shape[-2:]
    pad_ht = (((ht // 8) + 1) * 8 - ht) % 8
    pad_wd = (((wd // 8) + 1) * 8 - wd) % 8
    return F.pad(image, [pad_wd // 2, pad_wd - pad_wd // 2, pad_ht // 2, pad_ht - pad_ht // 2], mode="replicate")


def test_dynamic_degree_matches_vbench(models):
    from torchvision.models.optical_flow import raft_large

    video = random_video(frames=6, height=130, width=132, seed=5)
    dynamic = build_dimensions(["dynamic_degree"], options(models))["dynamic_degree"]
    result = dynamic(Video(video, fps=24.0), ITEM)  # round(24 / 8) = 3: frames 0 and 3
    raft = raft_large(weights=None)
    raft.load_state_dict(torch.load(models["raft"], weights_only=True))
    raft.eval()
    frames = [video[i][None].float() for i in range(0, 6, 3)]
    with torch.no_grad():
        first, second = vbench_padder(frames[0]), vbench_padder(frames[1])
        flow = raft(2 * (first / 255.0) - 1.0, 2 * (second / 255.0) - 1.0, num_flow_updates=20)[-1]
    flo = flow[0].permute(1, 2, 0).numpy()
    rad = np.sqrt(np.square(flo[:, :, 0]) + np.square(flo[:, :, 1]))
    cut = int(rad.shape[0] * rad.shape[1] * 0.05)
    max_rad = np.mean(abs(np.sort(-rad.flatten()))[:cut])
    assert rad.shape == (136, 136)
    assert result.details["magnitudes"] == pytest.approx([max_rad], rel=1e-4)
    threshold, needed = 6.0 * (130 / 256.0), round(4 * (2 / 16.0))  # needed rounds to 0: always moving
    assert result.total == float(needed == 0 or max_rad > threshold) == 1.0
    with pytest.raises(VBenchError, match="128 px"):
        dynamic(Video(random_video(frames=2, height=64, width=64)), ITEM)


class BrightnessFlow(torch.nn.Module):
    """A flow stand-in with RAFT's call signature: flow magnitude 20·|Δ brightness| per pixel.

    Random RAFT weights say nothing about motion, so the ordering test uses a flow whose answer is
    known: zero on a still video, large where a square moved."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, first, second, num_flow_updates=12):
        change = 20 * (second - first).abs().mean(1, keepdim=True)
        return [torch.cat([change, torch.zeros_like(change)], 1)]


def test_dynamic_degree_orders_moving_above_still():
    dynamic = dims.DynamicDegree(BrightnessFlow())
    moving = [dynamic(Video(square_video(frames=17, height=128, width=160, step=s, size=32), fps=8.0), ITEM).total for s in (4, 6)]
    still = [dynamic(Video(square_video(frames=17, height=128, width=160, step=0, size=32), fps=8.0), ITEM).total]
    assert np.mean(moving) > np.mean(still) and still == [0.0]
    # 16 frames need round(4·16/16) = 4 magnitudes above 6·128/256 = 3
    assert dims.is_moving([3.1, 3.1, 3.1, 3.1], 128, 128, 16) is True
    assert dims.is_moving([3.1, 3.1, 0.0, 3.1], 128, 128, 16) is False
    assert dims.is_moving([0.0], 128, 128, 2) is True and dims.is_moving([], 128, 128, 1) is False


@pytest.mark.skipif(not HAS_PYIQA, reason="pyiqa (the iqa extra) is not installed")
def test_imaging_quality_matches_vbench(models):
    from pyiqa.archs.musiq_arch import MUSIQ

    video = random_video(frames=2, height=64, width=96, seed=6)
    result = build_dimensions(["imaging_quality"], options(models))["imaging_quality"](Video(video), ITEM)
    model = MUSIQ(pretrained=False, **TINY_MUSIQ)
    model.load_state_dict(torch.load(models["musiq"], weights_only=True))
    model.eval()
    with torch.no_grad():
        scores = [float(model((video.float() / 255.0)[i][None])) for i in range(2)]
    assert result.total == pytest.approx(sum(scores) / 2 / 100, abs=1e-6)


def test_imaging_quality_resize_matches_vbench():
    from torchvision import transforms

    video = random_video(frames=1, height=600, width=700, seed=7)
    quality = dims.ImagingQuality(torch.nn.Identity(), mode="longer")
    scale = 512.0 / 700
    expected = transforms.Resize(size=(int(scale * 600), int(scale * 700)), antialias=False)(video) / 255.0
    assert torch.equal(quality.preprocess(video), expected)
    assert torch.equal(dims.ImagingQuality(torch.nn.Identity(), mode="None").preprocess(video), video / 255.0)


def test_imaging_quality_is_unavailable_without_pyiqa(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)
    monkeypatch.setitem(sys.modules, "pyiqa.archs", None)
    monkeypatch.setitem(sys.modules, "pyiqa.archs.musiq_arch", None)
    built = build_dimensions(["imaging_quality"], options(models, musiq_architecture={}))
    assert isinstance(built["imaging_quality"], DimensionUnavailable) and "pyiqa" in str(built["imaging_quality"])


def test_missing_weights_fail_before_any_model_loads(tmp_path):
    # the DINO id does not exist either: the head file is reported before any model is tried
    with pytest.raises(VBenchError, match="aesthetic_quality: weights file .*none.pth not found; pass --aesthetic-head"):
        build_dimensions(["subject_consistency", "aesthetic_quality"], ModelOptions(dino="no/such-model", aesthetic_head=str(tmp_path / "none.pth")))
    with pytest.raises(VBenchError, match="subject_consistency: cannot load DINO"):
        build_dimensions(["subject_consistency"], ModelOptions(dino=str(tmp_path / "no-dino")))


# -- detector dimensions ------------------------------------------------------------------------
def two_objects_video(frames=20, gap=30, vertical=False, blue_until=None) -> torch.Tensor:
    """A red square, and a blue square ``gap`` px to its right (or below) in the first ``blue_until`` frames."""
    video = torch.full((frames, 3, 96, 128), 120, dtype=torch.uint8)
    video[:, :, 10:26, 10:26] = torch.tensor([230, 20, 20], dtype=torch.uint8)[:, None, None]
    y, x = (10 + gap, 10) if vertical else (10, 10 + gap)
    video[: blue_until or frames, :, y : y + 16, x : x + 16] = torch.tensor([20, 20, 230], dtype=torch.uint8)[:, None, None]
    return video


def test_middle_frame_indices_match_vbench():
    def reference(num_frames, vlen):
        acc = min(num_frames, vlen)
        intervals = np.linspace(start=0, stop=vlen, num=acc + 1).astype(int)
        ranges = [(interv, intervals[i + 1] - 1) for i, interv in enumerate(intervals[:-1])]
        indices = [(x[0] + x[1]) // 2 for x in ranges]
        return indices + [indices[-1]] * (num_frames - len(indices))

    for length in (5, 16, 20, 49, 81):
        assert dims.middle_frame_indices(16, length) == reference(16, length)


def test_object_and_multiple_objects_count_frames():
    detector = ColourBlobDetector()
    video = Video(two_objects_video(frames=20, blue_until=10))
    kept = dims.middle_frame_indices(16, 20)
    blue_frames = sum(i < 10 for i in kept)
    car = dims.ObjectClass(detector)(video, VBenchPrompt("a car", ["object_class"], {"object_class": {"object": "car"}}))
    both = dims.MultipleObjects(detector)(video, VBenchPrompt("a car and a bicycle", ["multiple_objects"], {"multiple_objects": {"object": "car and bicycle"}}))
    dog = dims.ObjectClass(detector)(video, VBenchPrompt("a dog", ["object_class"], {"object_class": {"object": "dog"}}))
    assert (car.total, car.count) == (16, 16)
    assert (both.total, both.count) == (blue_frames, 16) and 0 < blue_frames < 16
    assert dog.total == 0  # its detections score 0.4, under GRiT's threshold


def test_spatial_relationship_matches_vbench_position_score():
    detector = ColourBlobDetector()
    item = VBenchPrompt("a car on the left of a bicycle", ["spatial_relationship"],
                        {"spatial_relationship": {"spatial_relationship": {"object_a": "car", "object_b": "bicycle", "relationship": "on the left of"}}})
    spatial = dims.SpatialRelationship(detector)
    apart = spatial(Video(two_objects_video(gap=30)), item)
    assert apart.total / apart.count == 1.0
    stacked = spatial(Video(two_objects_video(gap=30, vertical=True)), item)
    assert stacked.total == 0.0  # the axis is wrong for left/right
    # overlapping boxes: 16×16 squares 4 px apart horizontally overlap by 12 px -> iou 192/320
    fixed = lambda images: [{"car": [Detection((0, 0, 16, 16), 0.9)], "bicycle": [Detection((4, 0, 20, 16), 0.9)]} for _ in images]
    overlap = dims.SpatialRelationship(fixed)(Video(two_objects_video()), item)
    assert overlap.total / overlap.count == pytest.approx(0.1 / (192 / 320))
    assert dims.box_position_score("on the top of", (0, 0, 10, 10), (0, 20, 10, 30)) == 1.0
    assert dims.box_position_score("next to", (0, 0, 10, 10), (20, 0, 30, 10)) == 0.0
    lonely = spatial(Video(torch.full((4, 3, 32, 32), 120, dtype=torch.uint8)), item)
    assert lonely.total == 0.0 and lonely.count == 16


def test_color_ratio_over_frames_with_the_object():
    detector = ColourBlobDetector()
    color = dims.Color(detector, colour_of)
    red_car = VBenchPrompt("a red car", ["color"], {"color": {"color": "red"}})
    blue_car = VBenchPrompt("a blue car", ["color"], {"color": {"color": "blue"}})
    video = Video(two_objects_video())
    assert dims.Color.object_name("a red car", "red") == "car"
    assert color(video, red_car).score == 1.0 and color(video, blue_car).score == 0.0
    empty = color(Video(torch.full((4, 3, 32, 32), 120, dtype=torch.uint8)), red_car)
    assert empty.count == 0  # videos without the object are skipped, as VBench does


def test_detector_dimensions_unavailable_without_the_geneval_detector(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffalign.eval.geneval.detector", None)
    built = build_dimensions(["object_class", "color", "motion_smoothness", "scene", "temporal_style"])
    for name in ("object_class", "color"):
        assert isinstance(built[name], DimensionUnavailable) and "diffalign.eval.geneval.detector" in str(built[name])
    assert "AMT" in str(built["motion_smoothness"]) and "Tag2Text" in str(built["scene"]) and "trust_remote_code" in str(built["temporal_style"])


# -- runner, resume, CLI ----------------------------------------------------------------------
SUITE = [
    {"prompt_en": "In a still frame, a stop sign", "dimension": ["temporal_flickering"]},
    {"prompt_en": "a car", "dimension": ["object_class"], "auxiliary_info": {"object_class": {"object": "car"}}},
    {"prompt_en": "a person dancing", "dimension": ["motion_smoothness", "temporal_flickering"]},
]


class CountingDimension:
    def __init__(self, inner):
        self.inner, self.calls, self.name = inner, 0, inner.name

    def __call__(self, video, item):
        self.calls += 1
        return self.inner(video, item)


def write_videos(folder: Path, missing: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number, entry in enumerate(SUITE):
        for index in range(2):
            name = f"{entry['prompt_en']}-{index}.mp4"
            if name not in missing:
                save_video(two_objects_video(frames=4).float() / 255 if number == 1 else square_video(frames=4).float() / 255, folder / name)
    return folder


def test_evaluate_writes_rows_summary_and_resumes_without_rescoring(tmp_path):
    suite_file = tmp_path / "full_info.json"
    suite_file.write_text(json.dumps(SUITE))
    videos = write_videos(tmp_path / "videos", missing=("a person dancing-1.mp4",))
    (videos / "In a still frame, a stop sign-1.mp4").write_bytes(b"not a video")
    flicker = CountingDimension(dims.TemporalFlickering())
    objects = CountingDimension(dims.ObjectClass(ColourBlobDetector()))
    built = {"temporal_flickering": flicker, "object_class": objects, "motion_smoothness": DimensionUnavailable("no AMT")}
    names = list(built)
    suite = load_suite(suite_file)
    summary = evaluate_videos(videos, tmp_path / "run", names, suite=suite, videos_per_prompt=2, progress=False, built=built)
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 + 2 and flicker.calls == 2 and objects.calls == 2
    assert summary["unreadable"] == ["In a still frame, a stop sign-1.mp4"]
    assert summary["dimensions"]["temporal_flickering"]["missing_videos"] == 1
    assert summary["dimensions"]["object_class"]["score"] == pytest.approx(1.0)
    assert summary["dimensions"]["motion_smoothness"] == {"videos": 0, "missing_videos": 1, "status": "unavailable", "reason": "no AMT", "score": None}
    assert summary["partial"] and summary["total"] is not None
    assert "unavailable: no AMT" in (tmp_path / "run" / "summary.md").read_text()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["quality"] == pytest.approx(summary["quality"])

    with pytest.raises(VBenchError, match="--resume"):
        evaluate_videos(videos, tmp_path / "run", names, suite=suite, videos_per_prompt=2, progress=False, built=built)
    # a killed run: the last row was never written; resume scores only that one
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    (tmp_path / "run" / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    again = evaluate_videos(videos, tmp_path / "run", names, suite=suite, videos_per_prompt=2, progress=False, built=built, resume=True)
    assert flicker.calls + objects.calls == 4 + 1
    assert again["dimensions"]["temporal_flickering"]["score"] == pytest.approx(summary["dimensions"]["temporal_flickering"]["score"])


def test_cli_scores_a_folder_and_reports_errors(tmp_path, capsys):
    from diffalign.cli import main

    suite_file = tmp_path / "full_info.json"
    suite_file.write_text(json.dumps(SUITE))
    videos = write_videos(tmp_path / "videos")
    code = main(["eval", "vbench", "--videos", str(videos), "--vbench-prompts", str(suite_file), "--videos-per-prompt", "2",
                 "--dimensions", "temporal_flickering,motion_smoothness", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dimensions"]["temporal_flickering"]["videos"] == 4 and summary["dimensions"]["motion_smoothness"]["status"] == "unavailable"
    assert main(["eval", "vbench", "--videos", str(tmp_path / "none"), "--out", str(tmp_path / "r2")]) == 2
    assert main(["eval", "vbench", "--videos", str(videos), "--dimensions", "flicker", "--out", str(tmp_path / "r3")]) == 2
    assert main(["eval", "vbench", "--out", str(tmp_path / "r4")]) == 2
    assert main(["eval", "vbench", "--videos", str(videos), "--max-prompts", "0", "--out", str(tmp_path / "r5")]) == 2
    assert main(["eval", "vbench", "--videos", str(videos), "--dimensions", "aesthetic_quality", "--aesthetic-head", str(tmp_path / "no.pth"),
                 "--vbench-prompts", str(suite_file), "--out", str(tmp_path / "r6")]) == 2
    err = capsys.readouterr().err
    assert "diffalign eval: unknown VBench dimension(s) flicker" in err and "exactly one of --videos" in err
    assert "--max-prompts must be positive" in err and "aesthetic_quality: weights file" in err


class FakeVideoSampler:
    def __init__(self, frames=4):
        self.calls, self.frames = 0, frames

    def sample(self, prompts, steps, guidance_scale, generator):
        self.calls += 1
        return torch.stack([torch.rand(self.frames, 3, 32, 32, generator=g) for g in generator]) if self.frames else torch.rand(len(prompts), 3, 32, 32)


def test_generate_names_videos_and_resumes(tmp_path):
    suite = load_suite()
    small = [i for i in suite if "subject_consistency" in i.dimensions][:3] + [i for i in suite if "color" in i.dimensions][:2]
    sampler = FakeVideoSampler()
    out = generate_videos(sampler, tmp_path / "videos", ["subject_consistency"], small, videos_per_prompt=2, batch_size=4, progress=False)
    prompts = [i.prompt for i in small[:3]]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p}-{i}.mp4" for p in prompts for i in range(2))
    calls = sampler.calls
    generate_videos(sampler, out, ["subject_consistency"], small, videos_per_prompt=2, progress=False)
    assert sampler.calls == calls
    with pytest.raises(VBenchError, match="no videos"):
        generate_videos(FakeVideoSampler(frames=0), tmp_path / "images", ["color"], suite, videos_per_prompt=1, progress=False)


def test_cli_generates_with_a_video_model_then_scores(tiny_model, models, tmp_path):
    from diffalign.cli import main

    out = tmp_path / "run"
    argv = ["eval", "vbench", "--model", str(tiny_model("wan")), "--dimensions", "temporal_flickering,subject_consistency",
            "--max-prompts", "1", "--videos-per-prompt", "2", "--steps", "2", "--height", "32", "--width", "32",
            "--num-frames", "5", "--batch-size", "2", "--dino", str(models["dino"]), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    names = sorted(p.name for p in (out / "videos").iterdir())
    assert names == ["In a still frame, a stop sign-0.mp4", "In a still frame, a stop sign-1.mp4",
                     "a person swimming in ocean-0.mp4", "a person swimming in ocean-1.mp4"]
    summary = json.loads((out / "summary.json").read_text())
    assert {d: e["videos"] for d, e in summary["dimensions"].items()} == {"temporal_flickering": 2, "subject_consistency": 2}
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    assert main(argv + ["--resume"]) == 0  # nothing is sampled or scored again
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    assert len((out / "results.jsonl").read_text().splitlines()) == 4


def test_default_stand_in_is_the_geneval_detector(tmp_path):
    """After the GenEval harness is in, the four object dimensions run on its Mask2Former and colour classifier."""
    pytest.importorskip("diffalign.eval.geneval.detector", reason="the GenEval harness is not in this tree")
    pytest.importorskip("scipy", reason="transformers' Mask2Former needs scipy (the geneval extra)")
    geneval_tiny = pytest.importorskip("tests.tiny.geneval")
    from diffalign.eval.geneval.detector import object_names
    from tests.tiny.scorers import open_clip_folder

    detector = geneval_tiny.mask2former(tmp_path / "m2f", confident_class=object_names().index("car"))
    built = build_dimensions(["object_class", "color"], ModelOptions(detector_model=str(detector), color_model=str(open_clip_folder(tmp_path / "clip")), device="cpu"))
    video = Video(random_video(frames=20, height=64, width=64, seed=8))
    car = built["object_class"](video, VBenchPrompt("a car", ["object_class"], {"object_class": {"object": "car"}}))
    person = built["object_class"](video, VBenchPrompt("a person", ["object_class"], {"object_class": {"object": "person"}}))
    assert (car.total, car.count) == (16, 16) and person.total == 0
    colour = built["color"](video, VBenchPrompt("a red car", ["color"], {"color": {"color": "red"}}))
    # the same frames through GenEval's own detector and colour classifier
    from diffalign.eval.geneval.colors import CLIPColorClassifier
    from diffalign.eval.geneval.detector import Mask2FormerDetector
    from diffalign.media import tensor_to_pil

    frames = video.frames[dims.middle_frame_indices(16, 20)]
    classifier = CLIPColorClassifier(str(tmp_path / "clip"), pretrained=None, device="cpu")
    object_frames = colour_frames = 0
    for frame, found in zip(frames, Mask2FormerDetector(str(detector), device="cpu")(frames.float() / 255)):
        cars = [d for d in found.get("car", []) if d.score > 0.5]
        names = classifier.classify(tensor_to_pil(frame.float() / 255)[0], cars, "car") if cars else []
        object_frames += any(n in dims.VBENCH_COLOR_WORDS for n in names)
        colour_frames += "red" in names
    assert colour.details.get("object_frames") == object_frames and colour.details.get("color_frames", 0) == colour_frames
