"""GenEval: the rule engine on every clause type, the transformers Mask2Former with mmdet's scoring,
the CLIP colour classifier, the official summary arithmetic, and the whole path on CPU (tiny models)."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.eval.detection import Detection
from diffalign.eval.geneval import GenEvalOptions, MetadataError, evaluate, evaluate_detections, relative_position
from diffalign.eval.geneval.harness import load_prompts, sample_path, score_images, summarize_results

DOG = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}


def det(score, box=(0, 0, 10, 10), mask=None):
    return Detection(box=tuple(float(v) for v in box), score=score, mask=mask)


def counting(n, name="dog"):
    return {"tag": "counting", "include": [{"class": name, "count": n}], "exclude": [{"class": name, "count": n + 1}], "prompt": f"a photo of {n} {name}s"}


def position(relation, a="dog", b="cat", b_count=1):
    return {"tag": "position", "include": [{"class": b, "count": b_count}, {"class": a, "count": 1, "position": [relation, 0]}], "prompt": f"a photo of a {a} {relation} a {b}"}


# ------------------------------------------------------------------------------------- rules
def test_score_threshold_is_strict_and_counting_uses_0_9():
    assert evaluate_detections(DOG, {"dog": [det(0.31)]}) == (True, "")
    assert evaluate_detections(DOG, {"dog": [det(0.3), det(float("nan"))]}) == (False, "expected dog>=1, found 0")
    # counting: only scores above 0.9 count, and the exclude clause N+1 makes the count exact
    assert evaluate_detections(counting(2), {"dog": [det(0.95), det(0.91), det(0.9), det(0.85)]}) == (True, "")
    assert evaluate_detections(counting(2), {"dog": [det(0.95), det(0.91), det(0.905)]}) == (False, "expected dog<3, found 3")
    assert evaluate_detections(counting(3), {"dog": [det(0.95), det(0.91), det(0.89)]}) == (False, "expected dog>=3, found 2")
    # the same three detections pass an at-least clause of another task (threshold 0.3)
    two_dogs = {"tag": "two_object", "include": [{"class": "dog", "count": 3}], "prompt": "x"}
    assert evaluate_detections(two_dogs, {"dog": [det(0.95), det(0.91), det(0.89)]})[0]


def test_at_most_16_objects_per_class_and_optional_nms():
    many = {"dog": [det(0.5 + i / 100, box=(i, 0, i + 10, 10)) for i in range(20)]}
    capped = {"tag": "x", "include": [{"class": "dog", "count": 1}], "exclude": [{"class": "dog", "count": 17}], "prompt": "x"}
    assert evaluate_detections(capped, many)[0]  # 20 detections, 16 kept: the exclude never fires
    result = evaluate(capped, many)
    assert [d.score for d in result.objects["dog"]] == sorted((0.5 + i / 100 for i in range(4, 20)), reverse=True)
    duplicates = {"dog": [det(0.9, (0, 0, 10, 10)), det(0.8, (1, 0, 11, 10)), det(0.7, (50, 50, 60, 60))]}
    exact_two = counting(2)
    exact_two["tag"] = "x"  # threshold 0.3
    assert not evaluate_detections(exact_two, duplicates)[0]  # NMS off (GenEval's default): three dogs
    nms = GenEvalOptions(max_overlap=0.5)
    assert evaluate_detections(exact_two, duplicates, options=nms) == (True, "")  # IoU 100/132 > 0.5 suppressed
    with pytest.raises(ValueError, match="max_overlap"):
        GenEvalOptions(max_overlap=float("nan"))


def test_colour_is_classified_on_the_top_count_objects_only():
    red_dog = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}
    low_red, high_blue = det(0.5, (0, 0, 5, 5)), det(0.8, (10, 10, 20, 20))
    colour = {id(low_red): "red", id(high_blue): "blue"}
    seen = []

    def classify(objects, classname):
        seen.append((classname, [o.score for o in objects]))
        return [colour[id(o)] for o in objects]

    correct, reason = evaluate_detections(red_dog, {"dog": [low_red, high_blue]}, classify)
    assert not correct and reason == "expected red dog>=1, found 0 red; and 1 blue"
    assert seen == [("dog", [0.8])]
    high_blue.score = 0.4  # now the red one ranks first
    assert evaluate_detections(red_dog, {"dog": [low_red, high_blue]}, classify) == (True, "")
    # no colour classification when the count already failed, and a clear error without a classifier
    assert evaluate_detections(red_dog, {}, classify) == (False, "expected dog>=1, found 0") and len(seen) == 2
    with pytest.raises(ValueError, match="classify_colors"):
        evaluate_detections(red_dog, {"dog": [low_red]})


def _reference_relations(box_a, box_b, t=0.1):
    """GenEval's relative_position written out per axis."""
    ca = [(box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2]
    cb = [(box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2]
    da = [box_a[2] - box_a[0], box_a[3] - box_a[1]]
    db = [box_b[2] - box_b[0], box_b[3] - box_b[1]]
    offset = [ca[i] - cb[i] for i in range(2)]
    revised = [math.copysign(max(abs(offset[i]) - t * (da[i] + db[i]), 0), offset[i]) if offset[i] else 0.0 for i in range(2)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    return {name for name, holds in (("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5), ("below", dy > 0.5)) if holds}


def test_relative_position_matches_the_formula_and_the_shrink_band():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.uniform(0, 100) for _ in range(2)]
        b = [rng.uniform(0, 100) for _ in range(2)]
        box_a = (a[0], a[1], a[0] + rng.uniform(1, 40), a[1] + rng.uniform(1, 40))
        box_b = (b[0], b[1], b[0] + rng.uniform(1, 40), b[1] + rng.uniform(1, 40))
        assert relative_position(box_a, box_b) == _reference_relations(box_a, box_b)
    cat = (20, 0, 30, 10)  # 10 wide: centres must be more than 0.1·(10 + 10) = 2 apart
    assert relative_position((18.1, 0, 28.1, 10), cat) == set()  # offset 1.9: inside the shrink band
    assert relative_position((16, 0, 26, 10), cat) == set()  # offset 4: shrunk to 2, 2/4 = 0.5 is not > 0.5
    assert relative_position((15, 0, 25, 10), cat) == {"left of"}  # 3/5 = 0.6
    assert relative_position((50, 30, 60, 40), cat) == {"right of", "below"}  # diagonal: (28, 28) / 42.4, both hold


def test_position_against_every_target_object_and_no_target():
    cats = [det(0.9, (40, 0, 50, 10)), det(0.8, (0, 40, 10, 50))]
    dog_left = det(0.9, (0, 0, 10, 10))
    assert evaluate_detections(position("left of"), {"cat": cats[:1], "dog": [dog_left]}) == (True, "")
    # in the shrink band: no relation, GenEval's message with the empty relation set
    band = det(0.9, (38.5, 0, 48.5, 10))
    assert evaluate_detections(position("left of"), {"cat": cats[:1], "dog": [band]}) == (False, "expected dog left of target, found  target")
    # two target cats: the dog is left of one but above the other -> fails on the second
    correct, reason = evaluate_detections(position("left of", b_count=2), {"cat": cats, "dog": [dog_left]})
    assert not correct and reason == "expected dog left of target, found above target"
    # the target group failed (no cat): "no target", and the first clause's own failure first
    correct, reason = evaluate_detections(position("left of"), {"dog": [dog_left]})
    assert reason == "expected cat>=1, found 0\nno target for dog to be left of" and not correct


def test_exclude_clauses_and_bad_metadata():
    no_cat = dict(DOG, exclude=[{"class": "cat", "count": 1}])
    assert evaluate_detections(no_cat, {"dog": [det(0.9)], "cat": [det(0.2)]}) == (True, "")  # below threshold
    assert evaluate_detections(no_cat, {"dog": [det(0.9)], "cat": [det(0.4)]}) == (False, "expected cat<1, found 1")
    for bad, match in [
        ({"prompt": "x"}, "include"),
        ({"include": [{"class": "dog", "count": 0}]}, "count"),
        ({"include": [{"class": "dog", "count": 1, "position": ["left of", 0]}]}, "earlier include clause"),
        ({"include": [{"class": "dog", "count": 1}], "exclude": [{"count": 1}]}, "class"),
    ]:
        with pytest.raises(MetadataError, match=match):
            evaluate_detections(bad, {})


def test_shipped_prompts_are_the_553_official_ones():
    items = load_prompts()
    tags = [item.tag for item in items]
    assert len(items) == 553
    assert {t: tags.count(t) for t in set(tags)} == {
        "position": 100, "color_attr": 100, "two_object": 99, "colors": 94, "single_object": 80, "counting": 80,
    }
    assert items[0].metadata == {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    counts = [item.metadata for item in items if item.tag == "counting"]
    assert all(m["exclude"] == [{"class": m["include"][0]["class"], "count": m["include"][0]["count"] + 1}] for m in counts)


# ----------------------------------------------------------------------------------- summary
def test_summary_is_the_official_arithmetic():
    rng = random.Random(1)
    rows = []
    for prompt in range(30):
        tag = ["single_object", "counting", "colors", "position"][prompt % 4]
        metadata = json.dumps({"tag": tag, "include": [{"class": "dog", "count": 1}], "prompt": f"p{prompt}"})
        for n in range(4):
            rows.append({"filename": f"{prompt:05d}/samples/{n:04d}.png", "tag": tag, "prompt": f"p{prompt}", "correct": rng.random() < 0.4,
                         "reason": "", "metadata": metadata, "details": "{}"})
    summary = summarize_results(rows)
    # summary_scores.py: mean of correct per tag; overall = mean of those; any() per metadata group
    per_tag = {}
    for r in rows:
        per_tag.setdefault(r["tag"], []).append(r["correct"])
    tag_means = {t: sum(v) / len(v) for t, v in per_tag.items()}
    assert summary["tasks"]["counting"]["accuracy"] == pytest.approx(tag_means["counting"])
    assert summary["overall"] == pytest.approx(sum(tag_means.values()) / 4)
    assert summary["correct_images"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    groups = {}
    for r in rows:
        groups[r["metadata"]] = groups.get(r["metadata"], False) or r["correct"]
    assert summary["correct_prompts"] == pytest.approx(sum(groups.values()) / len(groups))
    assert summary["prompts"] == 30 and summary["images"] == 120
    assert summary["tasks"]["colors"]["correct"] == sum(per_tag["colors"])


# --------------------------------------------------------------------------- tiny real models
@pytest.fixture(scope="module")
def tiny_geneval(tmp_path_factory):
    from diffalign.eval.geneval.detector import object_names
    from tests.tiny.geneval import mask2former
    from tests.tiny.scorers import open_clip_folder

    pytest.importorskip("scipy", reason="transformers' Mask2Former needs scipy (the geneval extra)")
    root = tmp_path_factory.mktemp("geneval-models")
    dog = object_names().index("dog")
    return {
        "detector": mask2former(root / "mask2former", confident_class=dog),
        "clip": open_clip_folder(root / "clip"),
    }


def test_detector_is_mmdet_instance_scoring_of_the_transformers_model(tiny_geneval):
    from transformers import Mask2FormerForUniversalSegmentation

    from diffalign.eval.geneval.detector import Mask2FormerDetector, object_names, rescale_size

    assert rescale_size(512, 512) == (800, 800) and rescale_size(480, 640) == (800, 1067) and rescale_size(1024, 512) == (1333, 667)
    detector = Mask2FormerDetector(tiny_geneval["detector"], device="cpu", scale=(96, 64), resize_backend="torch")
    images = torch.rand(1, 3, 40, 50)
    found = detector(images)[0]
    # independently: resize to 64×80 (factor min(96/50, 64/40) = 1.6), normalise, pad to 64×96
    pixels = torch.nn.functional.interpolate((images * 255).round(), size=(64, 80), mode="bilinear", align_corners=False).round().clamp(0, 255)
    mean, std = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1), torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    pixels = torch.nn.functional.pad((pixels - mean) / std, (0, 16, 0, 0))
    model = Mask2FormerForUniversalSegmentation.from_pretrained(str(tiny_geneval["detector"])).eval()
    with torch.no_grad():
        out = model(pixel_values=pixels)
    probs = out.class_queries_logits[0].softmax(-1)[:, :-1]
    expected = []
    for flat in probs.flatten().topk(100).indices.tolist():
        query, label = divmod(flat, 80)
        logit = torch.nn.functional.interpolate(out.masks_queries_logits[0, query][None, None], size=(64, 96), mode="bilinear", align_corners=False)
        logit = torch.nn.functional.interpolate(logit[..., :64, :80], size=(40, 50), mode="bilinear", align_corners=False)[0, 0]
        mask = logit > 0
        score = probs[query, label] * (logit.sigmoid() * mask).sum() / (mask.sum() + 1e-6)
        ys, xs = np.nonzero(mask.numpy())
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, 0, 0)
        expected.append((object_names()[label], float(score), tuple(float(v) for v in box), mask.numpy()))
    assert sum(len(v) for v in found.values()) == 100
    expected_by_class = {}
    for name, score, box, mask in expected:  # highest class probability first, within each class too
        expected_by_class.setdefault(name, []).append((score, box, mask))
    assert set(found) == set(expected_by_class)
    for name, dets in found.items():
        for d, (score, box, mask) in zip(dets, expected_by_class[name], strict=True):
            assert d.score == pytest.approx(score, rel=1e-5, abs=1e-9) and d.box == box and np.array_equal(d.mask, mask)
    assert max(d.score for d in found["dog"]) > 0.3  # the confident tiny model's class
    with pytest.raises(ValueError, match="80 classes"):
        Mask2FormerDetector(tiny_geneval["detector"], device="cpu", class_names=["dog"])


def test_resize_is_opencv_bilinear_when_installed():
    cv2 = pytest.importorskip("cv2")
    from diffalign.eval.geneval.detector import MMDET_MEAN, MMDET_STD, preprocess

    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    expected = cv2.resize(image, (107, 80), interpolation=cv2.INTER_LINEAR).astype(np.float32)  # factor 80/30
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    for backend, tolerance in (("auto", 0), ("cv2", 0), ("torch", 1)):
        pixels, resized = preprocess(tensor, (1333, 80), resize_backend=backend)
        assert resized == (80, 107) and pixels.shape[-2:] == (96, 128)  # padded to multiples of 32
        values = pixels[0, :, :80, :107] * torch.tensor(MMDET_STD).view(3, 1, 1) + torch.tensor(MMDET_MEAN).view(3, 1, 1)
        assert np.abs(values.permute(1, 2, 0).numpy() - expected).max() <= tolerance + 1e-3
        assert (pixels[0, :, 80:] == 0).all() and (pixels[0, :, :, 107:] == 0).all()


def test_colour_classifier_is_zero_shot_clip_on_the_masked_crop(tiny_geneval):
    import open_clip

    from diffalign.eval.geneval.colors import CLIPColorClassifier, object_crop

    classifier = CLIPColorClassifier(tiny_geneval["clip"], device="cpu")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    masks = [np.zeros((48, 64), bool) for _ in range(3)]
    masks[0][5:20, 5:30] = True
    masks[1][20:40, 30:60] = True
    masks[2][::2, ::3] = True
    objects = [det(0.9, (5, 5, 30, 20), masks[0]), det(0.8, (30.4, 19.6, 60, 40), masks[1]), det(0.7, (0, 0, 64, 48), masks[2])]
    crop = np.asarray(object_crop(image, objects[2]))
    assert crop.shape == (48, 64, 3) and (crop[1::2] == 153).all() and (crop[0, 0] == np.asarray(image)[0, 0]).all()
    assert object_crop(image, objects[1]).size == (30, 20)  # PIL rounds the box
    # independently: open_clip's own model, transform and tokenizer
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tiny_geneval['clip']}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_geneval['clip']}")
    colours = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
    with torch.no_grad():
        weights = []
        for c in colours:
            text = model.encode_text(tokenizer([f"a photo of a {c} dog", f"a photo of a {c}-colored dog", f"a photo of a {c} object"]))
            mean = torch.nn.functional.normalize(text, dim=-1).mean(0)
            weights.append(mean / mean.norm())
        crops = []
        for o in objects:
            composite = Image.composite(image, Image.new("RGB", image.size, "#999"), Image.fromarray(o.mask))
            crops.append(transform(composite.crop(o.box)))
        features = torch.nn.functional.normalize(model.encode_image(torch.stack(crops)), dim=-1)
        expected = [colours[i] for i in (features @ torch.stack(weights, 1)).argmax(1).tolist()]
    assert classifier.classify(image, objects, "dog") == expected
    assert classifier.for_image(image)(objects[:1], "dog") == expected[:1]


def _write_folder(root, metadata_rows, per_prompt, size=(40, 48)):
    rng = np.random.default_rng(0)
    for index, metadata in enumerate(metadata_rows):
        folder = root / f"{index:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(metadata) + "\n")
        for n in range(per_prompt):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(sample_path(root, index, n))
    return root


RED_DOG = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}


def test_scoring_a_folder_writes_official_rows_and_resumes_without_rescoring(tiny_geneval, tmp_path):
    import functools

    from diffalign.eval.geneval.colors import CLIPColorClassifier
    from diffalign.eval.geneval.detector import Mask2FormerDetector
    from diffalign.media import load_image

    images = _write_folder(tmp_path / "images", [DOG, RED_DOG, counting(2)], per_prompt=2)
    detector = Mask2FormerDetector(tiny_geneval["detector"], device="cpu", scale=(96, 64))
    calls = []

    def counting_detector(batch):
        calls.append(batch.shape[0])
        return detector(batch)

    colours = functools.partial(CLIPColorClassifier, tiny_geneval["clip"], device="cpu")
    summary = score_images(images, tmp_path / "out", counting_detector, colours, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["filename"] for r in rows] == [f"{p:05d}/samples/{n:04d}.png" for p in range(3) for n in range(2)]
    assert {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"} <= set(rows[0])
    classifier = CLIPColorClassifier(tiny_geneval["clip"], device="cpu")
    for row in rows:  # each verdict is the rules applied to that image's detections
        image_path = images / row["filename"]
        found = detector(load_image(image_path)[None])[0]
        metadata = json.loads(row["metadata"])
        expected = evaluate_detections(metadata, found, classifier.for_image(Image.open(image_path).convert("RGB")))
        assert (row["correct"], row["reason"]) == expected
    assert rows[0]["correct"]  # the tiny detector is confident about dogs
    assert summary["overall"] == pytest.approx(np.mean([np.mean([r["correct"] for r in rows if r["tag"] == t]) for t in ("single_object", "colors", "counting")]))
    assert "| **overall** |" in (tmp_path / "out" / "summary.md").read_text()

    # a killed run: the last row never written; resume scores only that image
    results = tmp_path / "out" / "results.jsonl"
    results.write_text("".join(line + "\n" for line in results.read_text().splitlines()[:-1]) + '{"filename": "000')
    calls.clear()
    again = score_images(images, tmp_path / "out", counting_detector, colours, resume=True, progress=False)
    assert calls == [1] and again["overall"] == summary["overall"] and again["images"] == 6
    calls.clear()
    score_images(images, tmp_path / "out", counting_detector, colours, resume=True, progress=False)
    assert calls == []  # nothing left: no model call at all
    (images / "00001" / "samples" / "0002.png").write_bytes(b"not a png")  # corrupt: skipped and reported
    skipped = score_images(images, tmp_path / "out", counting_detector, colours, resume=True, progress=False)
    assert calls == [] and skipped["images"] == 6 and len(skipped["skipped"]) == 1 and "0002.png" in skipped["skipped"][0]
    from diffalign.eval.benchmark import BenchmarkError

    with pytest.raises(BenchmarkError, match="--resume"):
        score_images(images, tmp_path / "out", counting_detector, colours, progress=False)


def test_cli_generates_and_scores_two_prompts_on_cpu(tiny_geneval, tiny_model, tmp_path, capsys):
    from diffalign.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps(DOG) + "\n" + json.dumps(RED_DOG) + "\n")
    common = ["--detector", str(tiny_geneval["detector"]), "--clip-model", str(tiny_geneval["clip"]), "--detector-scale", "96", "64",
              "--scoring-device", "cpu", "--no-progress"]
    out = tmp_path / "run"
    code = main(["eval", "geneval", "--model", str(tiny_model("sd15")), "--prompts", str(prompts), "--images-per-prompt", "2",
                 "--steps", "2", "--out", str(out), *common])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("images/*/samples/*.png")) == [
        f"images/{p:05d}/samples/{n:04d}.png" for p in range(2) for n in range(2)
    ]
    assert json.loads((out / "images" / "00001" / "metadata.jsonl").read_text()) == RED_DOG
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and set(summary["tasks"]) == {"single_object", "colors"}
    assert "GenEval" in capsys.readouterr().out
    # the same images scored as a folder made elsewhere give the same numbers
    assert main(["eval", "geneval", "--images", str(out / "images"), "--out", str(tmp_path / "scored"), *common]) == 0
    assert json.loads((tmp_path / "scored" / "summary.json").read_text())["tasks"] == summary["tasks"]


def test_cli_user_errors_exit_2_before_loading_models(tmp_path, capsys):
    from diffalign.cli import main

    assert main(["eval", "geneval", "--no-progress"]) == 2
    assert "exactly one of --model" in capsys.readouterr().err
    assert main(["eval", "geneval", "--images", str(tmp_path / "missing"), "--detector", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    bad = tmp_path / "bad" / "00000"
    (bad / "samples").mkdir(parents=True)
    (bad / "metadata.jsonl").write_text('{"prompt": "x"}\n')
    assert main(["eval", "geneval", "--images", str(tmp_path / "bad"), "--detector", str(tmp_path / "nope")]) == 2
    assert "include" in capsys.readouterr().err
    assert main(["eval", "geneval", "--images", str(tmp_path / "bad"), "--option", "threshold=high"]) == 2
    assert "threshold=high" in capsys.readouterr().err
    assert main(["eval", "geneval", "--model", "oracle", "--no-images"]) == 2
    assert "--no-images" in capsys.readouterr().err
    assert main(["eval", "shapes", "--no-progress"]) == 2
    assert "give --model" in capsys.readouterr().err
