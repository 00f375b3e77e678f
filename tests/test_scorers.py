"""Scorer contract, registry and every built-in scorer on tiny random checkpoints of the real layouts.

Each model scorer is loaded through its real loading code from a local folder/file and compared with
the reference formula computed independently: official processors (``CLIPProcessor``, open_clip's
transform, PIL) on uint8 images, the model's own feature calls, and the score's formula.
"""
from __future__ import annotations

import io
import math
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign import scorers
from diffalign.media import MediaError
from diffalign.scorers import SCORERS, Scorer, WeightedSum, register_scorer
from diffalign.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, letterbox, normalize, resize_center_crop
from tests.tiny import scorers as tiny

PROMPTS = ["a red circle", "two blue squares above a green triangle", "a photo of a cat", "a dog"]


def smooth_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8-exact images with natural-image-like smoothness (upsampled noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 8 + 1, width // 8 + 1, generator=generator)
    x = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round() / 255


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    array = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """All tiny checkpoints, built once for this module."""
    root = tmp_path_factory.mktemp("scorer-ckpts")
    arch = tiny.open_clip_folder(root / "hps-arch", with_weights=False)
    paths = {
        "clip": tiny.hf_clip(root / "clip"),
        "pick_model": tiny.hf_clip(root / "pickscore", logit_scale=math.log(50.0), with_processor=False, seed=1),
        "pick_processor": tiny.clip_processor(root / "pick-processor"),
        "open_clip": tiny.open_clip_folder(root / "open-clip"),
        "hps_arch": arch,
        "hps": tiny.hps_checkpoint(root / "hps" / "HPS_v2.1_compressed.pt", arch),
        "aesthetic_v2": tiny.aesthetic_head(root / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth"),
        "aesthetic_v1": tiny.aesthetic_head(root / "aesthetic" / "sa_0_4_vit_l_14_linear.pth", version="v1"),
        "imagereward": tiny.imagereward(root / "imagereward", root / "bert"),
        "bert": root / "bert",
    }
    return paths


@pytest.fixture(scope="module")
def built(ckpt):
    """Scorers built once per module through ``scorers.load`` (the public entry point)."""
    cache: dict[str, Scorer] = {}
    options = {
        "clip": dict(model=ckpt["clip"], clamp=False),
        "clip_open_clip": dict(model=ckpt["open_clip"], clamp=False),
        "pickscore": dict(model=ckpt["pick_model"], processor=ckpt["pick_processor"]),
        "aesthetic": dict(head=ckpt["aesthetic_v2"].parent, clip_model=ckpt["clip"]),
        "aesthetic_v1": dict(head=ckpt["aesthetic_v1"], clip_model=ckpt["clip"], scale=0.1),
        "hps": dict(checkpoint=ckpt["hps"].parent, model=ckpt["hps_arch"], version="v2.1"),
        "imagereward": dict(model=ckpt["imagereward"], tokenizer=ckpt["bert"]),
        "jpeg_compressibility": {},
        "jpeg_incompressibility": {},
    }

    def get(key: str) -> Scorer:
        if key not in cache:
            name = "clip" if key == "clip_open_clip" else key
            cache[key] = scorers.load(name, **options[key])
        return cache[key]

    return get


# --------------------------------------------------------------------------- preprocessing parity
@pytest.mark.parametrize("size", [(80, 96), (97, 61), (256, 320), (300, 224)])
def test_resize_center_crop_matches_official_processors(size):
    """Tensor resize+crop equals CLIPImageProcessor (torchvision and PIL back-ends) and open_clip's
    transform within one uint8 level (the official paths round to uint8 after resizing)."""
    import open_clip
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    images = smooth_images(2, *size)
    ours = normalize(resize_center_crop(images, 224))
    level = 1.5 / 255 / min(OPENAI_CLIP_STD)  # one uint8 step (+ float slack) in normalised units
    reference = {
        "torchvision": CLIPImageProcessor()(images=to_uint8(images), return_tensors="pt")["pixel_values"],
        "pil": CLIPImageProcessorPil()(images=to_pil(images), return_tensors="pt")["pixel_values"],
        "open_clip": torch.stack([open_clip.image_transform(224, is_train=False)(im) for im in to_pil(images)]),
    }
    for name, ref in reference.items():
        assert ref.shape == ours.shape, name
        assert (ours - ref).abs().max() < level, name
        assert (ours - ref).abs().mean() < 0.3 * level, name


@pytest.mark.parametrize("size", [(80, 96), (150, 61), (224, 160), (400, 400)])
def test_letterbox_matches_hps_resize_max_size(size):
    """HPSv2's ResizeMaxSize on PIL: longest side -> 224 (round), bicubic, zero pad, left/top = floor(pad/2)."""
    images = smooth_images(2, *size, seed=3)
    ours = letterbox(images, 224)
    height, width = size
    scale = 224 / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    refs = []
    for image in to_pil(images):
        canvas = Image.new("RGB", (224, 224), (0, 0, 0))
        canvas.paste(image.resize((new_w, new_h), Image.BICUBIC), ((224 - new_w) // 2, (224 - new_h) // 2))
        refs.append(torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255)
    ref = torch.stack(refs)
    assert ours.shape == ref.shape == (2, 3, 224, 224)
    assert (ours - ref).abs().max() < 1.5 / 255
    # the pad is exactly zero: top/left floor(pad/2), the rest bottom/right
    top, left = (224 - new_h) // 2, (224 - new_w) // 2
    assert ours[..., :top, :].abs().sum() == 0 and ours[..., top + new_h :, :].abs().sum() == 0
    assert ours[..., :, :left].abs().sum() == 0 and ours[..., :, left + new_w :].abs().sum() == 0


def test_normalize_uses_openai_statistics():
    x = torch.rand(1, 3, 4, 4)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(normalize(x), (x - mean) / std)


# ----------------------------------------------------------------------- reference formula parity
def hf_reference(folder, processor_folder, images, prompts):
    """torchmetrics' CLIPScore definition: official CLIPProcessor on uint8 images, model features, cosine."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(folder)).eval()
    processor = CLIPProcessor.from_pretrained(str(processor_folder))
    inputs = processor(text=prompts, images=list(to_uint8(images)), return_tensors="pt", padding=True)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    return cos, model


@pytest.mark.parametrize("size", [(64, 64), (80, 120)])
def test_clip_score_matches_torchmetrics_definition(built, ckpt, size):
    images = smooth_images(4, *size, seed=1)
    cos, _ = hf_reference(ckpt["clip"], ckpt["clip"], images, PROMPTS)
    reference = 100 * cos
    with torch.no_grad():
        ours = built("clip")(images, PROMPTS)
    # at the model's resolution no resize happens: exact up to float error; else the resize drift
    tolerance = 1e-3 if size == (64, 64) else 0.5
    torch.testing.assert_close(ours, reference, atol=tolerance, rtol=0)
    # torchmetrics' number is the batch mean clamped at 0; clamp=True clamps each item
    assert float(ours.mean().clamp(min=0)) == pytest.approx(float(reference.mean().clamp(min=0)), abs=tolerance)
    clamped = scorers.load("clip", model=ckpt["clip"])
    with torch.no_grad():
        torch.testing.assert_close(clamped(images, PROMPTS), reference.clamp(min=0), atol=tolerance, rtol=0)


def test_clip_open_clip_backend_matches_open_clip_reference(built, ckpt):
    import open_clip

    images = smooth_images(3, 64, 64, seed=2)
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{ckpt['open_clip']}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{ckpt['open_clip']}")
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([transform(im) for im in to_pil(images)]), normalize=True)
        txt = model.encode_text(tokenizer(PROMPTS[:3]), normalize=True)
        ours = built("clip_open_clip")(images, PROMPTS[:3])
    torch.testing.assert_close(ours, 100 * (img * txt).sum(-1), atol=1e-3, rtol=0)


def test_pickscore_uses_checkpoint_logit_scale(built, ckpt):
    images = smooth_images(4, 64, 64, seed=4)
    cos, model = hf_reference(ckpt["pick_model"], ckpt["pick_processor"], images, PROMPTS)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(50.0, rel=1e-5)  # not CLIP's default 1/0.07
    with torch.no_grad():
        ours = built("pickscore")(images, PROMPTS)
    torch.testing.assert_close(ours, 50.0 * cos, atol=1e-3, rtol=0)


def test_pickscore_without_processor_names_the_fix(ckpt):
    with pytest.raises(OSError, match="processor="):
        scorers.load("pickscore", model=ckpt["pick_model"], processor=ckpt["pick_model"])


def _linear_chain(state, indices, x):
    for index in indices:
        prefix = f"layers.{index}." if index is not None else ""
        x = x @ state[f"{prefix}weight"].T + state[f"{prefix}bias"]
    return x


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_aesthetic_matches_head_on_normalised_clip_embedding(built, ckpt, version):
    from transformers import CLIPModel, CLIPProcessor

    images = smooth_images(3, 64, 64, seed=5)
    model = CLIPModel.from_pretrained(str(ckpt["clip"])).eval()
    processor = CLIPProcessor.from_pretrained(str(ckpt["clip"]))
    pixels = processor(images=list(to_uint8(images)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeds = model.get_image_features(pixel_values=pixels)
        embeds = embeds if isinstance(embeds, torch.Tensor) else embeds.pooler_output
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        state = torch.load(ckpt[f"aesthetic_{version}"], weights_only=True)
        if version == "v2":  # dropout is identity at inference and there are no activations
            reference = _linear_chain(state, (0, 2, 4, 6, 7), embeds).squeeze(-1)
            ours = built("aesthetic")(images)  # prompt-free
        else:
            reference = 0.1 * _linear_chain(state, (None,), embeds).squeeze(-1)
            ours = built("aesthetic_v1")(images, None)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_aesthetic_requires_a_head_file():
    with pytest.raises(ValueError, match="sac\\+logos\\+ava1-l14-linearMSE.pth"):
        scorers.load("aesthetic", clip_model="unused")


def test_hps_matches_letterboxed_open_clip_cosine(built, ckpt):
    import open_clip

    images = smooth_images(3, 48, 80, seed=6)  # non-square: letterbox pads top and bottom
    model = open_clip.create_model(f"local-dir:{ckpt['hps_arch']}", load_weights=False)
    model.load_state_dict(torch.load(ckpt["hps"], weights_only=True)["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{ckpt['hps_arch']}")
    refs = []
    for image in to_pil(images):  # ResizeMaxSize(64) on PIL, ToTensor, Normalize
        scale = 64 / max(image.size)
        w, h = round(image.size[0] * scale), round(image.size[1] * scale)
        canvas = Image.new("RGB", (64, 64), (0, 0, 0))
        canvas.paste(image.resize((w, h), Image.BICUBIC), ((64 - w) // 2, (64 - h) // 2))
        refs.append(torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255)
    with torch.no_grad():
        img = model.encode_image(normalize(torch.stack(refs)), normalize=True)
        txt = model.encode_text(tokenizer(PROMPTS[:3]), normalize=True)
        ours = built("hps")(images, PROMPTS[:3])
    torch.testing.assert_close(ours, (img * txt).sum(-1), atol=2e-3, rtol=0)


def test_hps_rejects_unknown_version(ckpt):
    with pytest.raises(ValueError, match="v2.0"):
        scorers.load("hps", version="v3", checkpoint=ckpt["hps"], model=ckpt["hps_arch"])


def _imagereward_reference(state, med, pixels, input_ids, attention_mask):
    """ImageReward written out from the checkpoint tensors: pre-LN ViT (64-d heads), post-LN BERT with
    bidirectional self-attention and cross-attention to all ViT tokens, affine MLP on [CLS], standardise."""
    F = torch.nn.functional

    def lin(x, p):
        return x @ state[p + ".weight"].T + state[p + ".bias"]

    def ln(x, p, eps):
        return F.layer_norm(x, x.shape[-1:], state[p + ".weight"], state[p + ".bias"], eps)

    def attend(q, k, v, heads, mask=None):
        b, n, d = q.shape
        split = lambda t: t.view(b, t.shape[1], heads, d // heads).transpose(1, 2)
        logits = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
        return (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, d)

    p = "blip.visual_encoder"
    weight = state[f"{p}.patch_embed.proj.weight"]
    x = F.conv2d(pixels, weight, state[f"{p}.patch_embed.proj.bias"], stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([state[f"{p}.cls_token"].expand(x.shape[0], -1, -1), x], 1) + state[f"{p}.pos_embed"]
    width = x.shape[-1]
    blocks = sorted({int(k.split(".")[3]) for k in state if k.startswith(f"{p}.blocks.")})
    for i in blocks:
        b = f"{p}.blocks.{i}"
        q, k, v = lin(ln(x, f"{b}.norm1", 1e-6), f"{b}.attn.qkv").chunk(3, -1)
        x = x + lin(attend(q, k, v, width // 64), f"{b}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"{b}.norm2", 1e-6), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    image = ln(x, f"{p}.norm", 1e-6)

    p, heads = "blip.text_encoder", med["num_attention_heads"]
    h = state[f"{p}.embeddings.word_embeddings.weight"][input_ids]
    h = h + state[f"{p}.embeddings.position_embeddings.weight"][: input_ids.shape[1]]
    h = ln(h, f"{p}.embeddings.LayerNorm", 1e-12)
    for i in range(med["num_hidden_layers"]):
        layer = f"{p}.encoder.layer.{i}"
        for kind, memory, mask in (("attention", None, attention_mask), ("crossattention", image, None)):
            source = h if memory is None else memory
            a = attend(lin(h, f"{layer}.{kind}.self.query"), lin(source, f"{layer}.{kind}.self.key"), lin(source, f"{layer}.{kind}.self.value"), heads, mask)
            h = ln(lin(a, f"{layer}.{kind}.output.dense") + h, f"{layer}.{kind}.output.LayerNorm", 1e-12)
        h = ln(lin(F.gelu(lin(h, f"{layer}.intermediate.dense")), f"{layer}.output.dense") + h, f"{layer}.output.LayerNorm", 1e-12)
    raw = h[:, 0]
    for index in (0, 2, 4, 6, 7):
        raw = lin(raw, f"mlp.layers.{index}")
    return (raw.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


def test_imagereward_matches_reference_forward(built, ckpt):
    import json

    from torchvision import transforms
    from transformers import BertTokenizer

    images = smooth_images(3, 48, 40, seed=7)
    state = torch.load(ckpt["imagereward"] / "ImageReward.pt", weights_only=True)
    med = json.loads((ckpt["imagereward"] / "med_config.json").read_text())
    size = 32  # the tiny ViT's resolution (224 in the released model)
    transform = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(size),
        transforms.ToTensor(), transforms.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    ])
    pixels = torch.stack([transform(im) for im in to_pil(images)])
    tokens = BertTokenizer.from_pretrained(str(ckpt["bert"]))(PROMPTS[:3], padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        reference = _imagereward_reference(state, med, pixels, tokens["input_ids"], tokens["attention_mask"])
        ours = built("imagereward")(images, PROMPTS[:3])
    torch.testing.assert_close(ours, reference, atol=0.02, rtol=0)  # tensor vs PIL resize drift
    # on images at the model's resolution the two paths are identical up to float error
    exact = smooth_images(3, size, size, seed=8)
    pixels = torch.stack([transform(im) for im in to_pil(exact)])
    with torch.no_grad():
        torch.testing.assert_close(built("imagereward")(exact, PROMPTS[:3]), _imagereward_reference(state, med, pixels, tokens["input_ids"], tokens["attention_mask"]), atol=1e-4, rtol=0)


def test_imagereward_truncates_prompts_at_35_tokens(built):
    images = smooth_images(2, 32, 32, seed=9)
    base = " ".join(["red circle"] * 20)  # > 35 word pieces
    with torch.no_grad():
        scores = built("imagereward")(images[:1].expand(2, -1, -1, -1), [base, base + " blue square"])
    torch.testing.assert_close(scores[0], scores[1], atol=1e-6, rtol=0)
    with torch.no_grad():  # the same words within the limit do change the score
        assert (built("imagereward")(images[:1].expand(2, -1, -1, -1), ["red circle", "blue square"]).diff().abs() > 1e-4).all()


def test_jpeg_scores_equal_pil_byte_counts(built):
    images = smooth_images(3, 40, 56, seed=10)
    images[1] = torch.rand(3, 40, 56)  # noise compresses badly
    sizes = []
    for array in to_uint8(images).permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
        sizes.append(len(buffer.getvalue()) / 1000)
    sizes = torch.tensor(sizes)
    torch.testing.assert_close(built("jpeg_incompressibility")(images), sizes)
    torch.testing.assert_close(built("jpeg_compressibility")(images), -sizes)
    assert sizes[1] > sizes[0]
    torch.testing.assert_close(scorers.load("jpeg_compressibility", scale=1 / 500)(images), -sizes / 500)


DIFFERENTIABLE = ["clip", "clip_open_clip", "pickscore", "aesthetic", "aesthetic_v1", "hps", "imagereward"]


@pytest.mark.parametrize("key", DIFFERENTIABLE)
def test_gradients_reach_the_input(built, key):
    scorer = built(key)
    assert scorer.differentiable
    images = smooth_images(2, 70, 90, seed=11).requires_grad_(True)
    scores = scorer(images, PROMPTS[:2])
    assert scores.shape == (2,) and scores.dtype == torch.float32
    (grad,) = torch.autograd.grad(scores.sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(not p.requires_grad for p in scorer.parameters())  # frozen weights


def test_non_differentiable_scorers_are_marked(built):
    assert not built("jpeg_compressibility").differentiable


def test_half_precision_option(ckpt, built):
    images = smooth_images(2, 64, 64, seed=12)
    half = scorers.load("clip", model=ckpt["clip"], clamp=False, dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(half(images, PROMPTS[:2]), built("clip")(images, PROMPTS[:2]), atol=3.0, rtol=0)


# --------------------------------------------------------------------------------- the contract
def test_image_scorer_averages_video_frames_with_stride(built):
    videos = smooth_images(2 * 5, 32, 32, seed=13).view(2, 5, 3, 32, 32)
    scorer = built("jpeg_incompressibility")
    per_frame = scorer(videos.flatten(0, 1)).view(2, 5)
    torch.testing.assert_close(scorer(videos), per_frame.mean(1))
    strided = scorers.load("jpeg_incompressibility", frame_stride=2)
    torch.testing.assert_close(strided(videos), per_frame[:, ::2].mean(1))


def test_chunking_does_not_change_scores(monkeypatch, built):
    images = smooth_images(4, 64, 64, seed=14)
    scorer = built("clip")
    with torch.no_grad():
        whole = scorer(images, PROMPTS)
        monkeypatch.setattr(scorer, "batch_size", 1)
        torch.testing.assert_close(scorer(images, PROMPTS), whole, atol=1e-4, rtol=0)


def test_bad_inputs_raise_clear_errors(built):
    scorer = built("clip")
    images = smooth_images(2, 64, 64)
    with pytest.raises(ValueError, match="3 prompts for a batch of 2"):
        scorer(images, PROMPTS[:3])
    with pytest.raises(ValueError, match="needs one prompt per item"):
        scorer(images, None)
    with pytest.raises(MediaError, match="B×C×H×W"):
        scorer(images[0], PROMPTS[:1])
    with pytest.raises(TypeError, match="float tensor"):
        scorer(to_uint8(images), PROMPTS[:2])
    assert torch.equal(scorer(images, "a dog"), scorer(images, ["a dog", "a dog"]))  # one prompt for all


class ConstantScorer(Scorer):
    """A plugin scorer for the entry-point test: returns ``value`` for every item."""

    name = "constant"
    needs_prompts = False

    def __init__(self, value: float = 1.0, **options):
        super().__init__(**options)
        self.value = value

    def score_images(self, images, prompts):
        return torch.full((images.shape[0],), self.value)


def test_weighted_spec_builds_weighted_sum(monkeypatch, ckpt, built):
    """``load("pickscore:0.5,clip:0.5")``: each part gets the shared options plus its own; the sum is weighted."""
    received = {}

    def reuse(key):  # the real factories are exercised above; here reuse the built scorers
        scorer = built(key)  # build before the factory is replaced: building it goes through the registry

        def factory(**options):
            received[key] = options
            return scorer

        return factory

    monkeypatch.setattr(SCORERS, "_factories", {**SCORERS._factories, "pickscore": reuse("pickscore"), "clip": reuse("clip")})
    images = smooth_images(2, 64, 64, seed=15)
    combined = scorers.load("pickscore:0.5,clip:0.5", device="cpu", pickscore={"model": "P"}, clip={"clamp": False})
    assert received == {"pickscore": {"device": "cpu", "model": "P"}, "clip": {"device": "cpu", "clamp": False}}
    assert isinstance(combined, WeightedSum) and combined.weights == [0.5, 0.5]
    assert combined.differentiable and combined.name == "pickscore:0.5,clip:0.5"
    with torch.no_grad():
        expected = 0.5 * built("pickscore")(images, PROMPTS[:2]) + 0.5 * built("clip")(images, PROMPTS[:2])
        torch.testing.assert_close(combined(images, PROMPTS[:2]), expected, atol=1e-4, rtol=0)
    mixed = WeightedSum({built("clip"): 1.0, built("jpeg_compressibility"): 2.0})
    assert not mixed.differentiable and mixed.needs_prompts


def test_unknown_scorer_lists_known_names():
    with pytest.raises(KeyError) as error:
        scorers.load("no-such-scorer")
    for name in ("pickscore", "clip", "imagereward", "hps", "aesthetic", "jpeg_compressibility", "shapes"):
        assert name in str(error.value)
    with pytest.raises(ValueError, match="not a number"):
        scorers.load("clip:abc")


def test_entry_point_group_registers_plugins(monkeypatch):
    import diffalign.registry

    plugin = EntryPoint(name="constant_plugin", value=f"{__name__}:ConstantScorer", group="diffalign.scorers")

    def fake_entry_points(group=None):
        return [plugin] if group == "diffalign.scorers" else []

    monkeypatch.setattr(diffalign.registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(SCORERS, "_factories", dict(SCORERS._factories))
    monkeypatch.setattr(SCORERS, "_loaded_entry_points", False)
    assert "constant_plugin" in scorers.list_scorers()
    scorer = scorers.load("constant_plugin", value=3.0)
    torch.testing.assert_close(scorer(torch.rand(2, 3, 8, 8)), torch.full((2,), 3.0))
    combined = scorers.load("constant_plugin:2,jpeg_compressibility:0", constant_plugin={"value": 3.0})
    torch.testing.assert_close(combined(torch.rand(2, 3, 8, 8)), torch.full((2,), 6.0))


def test_register_scorer_decorator_and_factory_type_check(monkeypatch):
    monkeypatch.setattr(SCORERS, "_factories", dict(SCORERS._factories))
    register_scorer("constant_test")(ConstantScorer)
    assert isinstance(scorers.load("constant_test"), ConstantScorer)
    register_scorer("not_a_scorer")(lambda: object())
    with pytest.raises(TypeError, match="not a Scorer"):
        scorers.load("not_a_scorer")


# ------------------------------------------------------------------------------------ ShapesWorld
def test_shapes_scorer_uses_the_judge():
    judge = pytest.importorskip("diffalign.shapes.judge", reason="the ShapesWorld judge is not built yet")
    from diffalign.shapes import world

    samples = [world.make_sample(i, seed=0) for i in range(4)]
    images = torch.stack([s.image for s in samples])
    captions = [s.caption for s in samples]
    wrong = captions[1:] + captions[:1]
    verdicts = judge.judge_batch(images, wrong)
    binary = scorers.load("shapes", mode="binary")
    fraction = scorers.load("shapes")
    torch.testing.assert_close(binary(images, wrong), torch.tensor([float(v.correct) for v in verdicts]))
    torch.testing.assert_close(fraction(images, wrong), torch.tensor([float(v.score) for v in verdicts]))
    # the renderer's own captions are judged correct
    assert binary(images, captions).tolist() == [float(judge.judge(s.image, s.caption).correct) for s in samples]
    with pytest.raises(ValueError, match="mode"):
        scorers.load("shapes", mode="soft")
