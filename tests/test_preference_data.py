"""Preference data: sources (Pick-a-Pic parquet, KTO CSV, manifests), the loader, and ``diffalign prefs``."""
from __future__ import annotations

import io
import json
import math

from pathlib import Path

import pytest
import torch
from PIL import Image

from diffalign.preferences import DataConfig, PreferenceBatch, PreferenceDataError, PreferenceLoader, open_preferences

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def png_bytes(color, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pickapic(path, labels, corrupt=()):
    """A Pick-a-Pic v2 schema parquet: the human-preferred image is red, the other blue; ``corrupt``
    is a set of (row, column) whose bytes are garbage."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": [], "label_1": []}
    for index, label_0 in enumerate(labels):
        first, second = (RED, BLUE) if label_0 == 1 else (BLUE, RED) if label_0 == 0 else (GREEN, GREEN)
        rows["caption"].append(f"{'tie' if label_0 == 0.5 else 'pair'} {index}")
        for column, color in (("jpg_0", first), ("jpg_1", second)):
            data = png_bytes(color)
            rows[column].append(data[: len(data) // 3] if (index, column) in corrupt else data)
        rows["label_0"].append(float(label_0))
        rows["label_1"].append(1.0 - float(label_0))
    pq.write_table(pa.table(rows), path)
    return path


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


def color_of(image: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(round(float(v) * 255)) for v in image[:, 0, 0])


def test_pickapic_parquet_drops_ties_and_flips_pairs(datasets_cache):
    labels = [1, 0, 0.5, 1, 0, 0.5, 0]
    path = write_pickapic(datasets_cache / "train-0.parquet", labels)
    pairs = open_preferences(DataConfig(source=str(path)), kind="pairs")
    assert pairs.format == "pickapic" and pairs.dropped == {"tie": 2}
    assert len(pairs) == 5 and [pairs.prompt(i) for i in range(5)] == ["pair 0", "pair 1", "pair 3", "pair 4", "pair 6"]
    for index in range(len(pairs)):
        example = pairs.row(index)
        assert [color_of(m) for m in example.media] == [RED, BLUE], example.row_id  # preferred first, flips applied
        assert example.label == 1.0
    # derived kinds: every image as a label (preferred desirable), and the preferred images as winners
    labelled = open_preferences(DataConfig(source=str(datasets_cache), kind="labels"), kind="pairs")
    assert len(labelled) == 10 and [labelled.label(i) for i in range(4)] == [1.0, 0.0, 1.0, 0.0]
    assert all(color_of(labelled.row(i).media[0]) == (RED if i % 2 == 0 else BLUE) for i in range(10))
    winners = open_preferences(DataConfig(source=str(path), max_examples=4), kind="winners")
    assert len(winners) == 3 and all(color_of(winners.row(i).media[0]) == RED for i in range(3))


def test_pickapic_from_save_to_disk_and_offline_hub_id(datasets_cache, monkeypatch):
    import datasets

    table = {"caption": ["a", "b", "c"], "jpg_0": [png_bytes(RED), png_bytes(BLUE), png_bytes(RED)],
             "jpg_1": [png_bytes(BLUE), png_bytes(RED), png_bytes(GREEN)], "label_0": [1.0, 0.0, 0.5], "label_1": [0.0, 1.0, 0.5]}
    datasets.Dataset.from_dict(table).save_to_disk(str(datasets_cache / "saved"))
    pairs = open_preferences(DataConfig(source=str(datasets_cache / "saved")), kind="pairs")
    assert len(pairs) == 2 and all(color_of(pairs.row(i).media[0]) == RED for i in range(2))

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(PreferenceDataError, match="not in the local Hugging Face cache.*save_to_disk"):
        open_preferences(DataConfig(source="nobody-here/no-such-dataset"), kind="pairs")
    with pytest.raises(PreferenceDataError, match="no such"):
        open_preferences(DataConfig(source=str(datasets_cache / "missing.parquet")), kind="pairs")


def save_png(path, color, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_kto_csv_and_manifests_load_images_and_videos(tmp_path):
    from diffalign.media import save_video

    save_png(tmp_path / "img" / "good.png", RED)
    save_png(tmp_path / "img" / "bad.jpg", BLUE, size=(12, 8))
    (tmp_path / "kto.csv").write_text("file_path,caption,label\nimg/good.png,a red one,exclusive_win\nimg/bad.jpg,a blue one,exclusive_lose\n")
    kto = open_preferences(DataConfig(source=str(tmp_path / "kto.csv")), kind="labels")
    assert kto.format == "kto_csv" and [kto.label(i) for i in range(2)] == [1.0, 0.0]
    assert color_of(kto.row(0).media[0]) == RED and kto.row(1).media[0].shape == (3, 8, 12)
    assert len(open_preferences(DataConfig(source=str(tmp_path / "kto.csv"), kind="winners"))) == 1
    resized = PreferenceLoader(kto, DataConfig(examples_per_epoch=2, resolution=6), seed=0).next_batch()
    assert resized.media.shape == (2, 3, 6, 6) and sorted(resized.labels.tolist()) == [0.0, 1.0]
    with pytest.raises(PreferenceDataError, match="labels source cannot give pairs"):
        open_preferences(DataConfig(source=str(tmp_path / "kto.csv")), kind="pairs")
    (tmp_path / "bad_kto.csv").write_text("file_path,caption,label\nimg/good.png,a red one,maybe\n")
    with pytest.raises(PreferenceDataError, match=r"bad_kto.csv:2: label 'maybe'"):
        open_preferences(DataConfig(source=str(tmp_path / "bad_kto.csv")), kind="labels")

    sub = tmp_path / "manifests"
    sub.mkdir()
    write_jsonl(sub / "pairs.jsonl", [{"prompt": "p", "preferred": "../img/good.png", "rejected": "../img/bad.jpg", "soft_label": 0.7},
                                      {"prompt": "q", "preferred": "../img/good.png", "rejected": "../img/bad.jpg"}])
    pairs = open_preferences(DataConfig(source=str(sub / "pairs.jsonl"), resolution=4), kind="pairs")
    assert [pairs.label(0), pairs.label(1)] == [0.7, 1.0]
    batch = PreferenceLoader(pairs, DataConfig(examples_per_epoch=2, resolution=4), seed=0).next_batch()
    assert batch.media.shape == (2, 2, 3, 4, 4) and torch.allclose(batch.labels.sort().values, torch.tensor([0.7, 1.0]))
    assert color_of(batch.media[0, 0]) == RED and max(abs(a - b) for a, b in zip(color_of(batch.media[0, 1]), BLUE)) < 8  # JPEG

    frames = torch.zeros(3, 3, 8, 8)
    frames[:, 1] = torch.linspace(0, 1, 3)[:, None, None]
    save_video(frames, tmp_path / "clip.gif")
    (tmp_path / "winners.csv").write_text("prompt,media\na clip,clip.gif\nan image,img/good.png\n")
    winners = open_preferences(DataConfig(source=str(tmp_path / "winners.csv")), kind="experts")
    assert winners.row(0).media[0].shape == (3, 3, 8, 8) and winners.row(1).media[0].shape == (3, 8, 8)
    write_jsonl(tmp_path / "labels.jsonl", [{"prompt": "x", "media": "img/good.png", "desirable": True},
                                            {"prompt": "y", "media": "img/bad.jpg", "desirable": "0"}])
    assert [open_preferences(DataConfig(source=str(tmp_path / "labels.jsonl")), kind="labels").label(i) for i in range(2)] == [1.0, 0.0]

    write_jsonl(tmp_path / "bad_soft.jsonl", [{"prompt": "p", "preferred": "a.png", "rejected": "b.png", "soft_label": 0.3}])
    with pytest.raises(PreferenceDataError, match=r"row 1: soft_label must be in \[0.5, 1\]"):
        open_preferences(DataConfig(source=str(tmp_path / "bad_soft.jsonl")), kind="pairs")
    write_jsonl(tmp_path / "empty_prompt.jsonl", [{"prompt": " ", "media": "a.png"}])
    with pytest.raises(PreferenceDataError, match="empty prompt"):
        open_preferences(DataConfig(source=str(tmp_path / "empty_prompt.jsonl")), kind="winners")
    with pytest.raises(PreferenceDataError, match="unknown preference kind"):
        open_preferences(DataConfig(source=str(tmp_path / "labels.jsonl")), kind="triples")


def batches_equal(a: PreferenceBatch, b: PreferenceBatch) -> bool:
    same = a.prompts == b.prompts and a.row_ids == b.row_ids
    for name in ("media", "latents", "labels"):
        x, y = getattr(a, name), getattr(b, name)
        same = same and ((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)))
    return same and torch.equal(a.extras["draw_position"], b.extras["draw_position"])


def test_corrupt_rows_are_skipped_listed_and_replaced(datasets_cache, caplog):
    corrupt = {(7, "jpg_1"), (23, "jpg_0")}  # 2 of 40 rows: 5%
    path = write_pickapic(datasets_cache / "data.parquet", [1, 0] * 20, corrupt=corrupt)
    data = open_preferences(DataConfig(source=str(path)), kind="pairs")
    loader = PreferenceLoader(data, DataConfig(examples_per_epoch=8), seed=3)
    with caplog.at_level("WARNING"):
        batches = [loader.next_batch() for _ in range(10)]  # two passes over the data
    assert all(len(b) == 8 and b.media.shape == (8, 2, 3, 8, 8) for b in batches)
    assert sorted(s["row_id"] for s in loader.skipped) == ["data:23", "data:7"]
    assert all("cannot decode image" in s["reason"] for s in loader.skipped)
    assert sum("skipping preference row" in r.message for r in caplog.records) == 2  # logged once each
    drawn = [r for b in batches for r in b.row_ids]
    assert not {"data:7", "data:23"} & set(drawn)
    assert all(color_of(b.media[i, 0]) == RED for b in batches for i in range(8))
    threaded = PreferenceLoader(data, DataConfig(examples_per_epoch=8), seed=3, num_workers=2)
    assert all(batches_equal(threaded.next_batch(), b) for b in batches)  # decoding threads change nothing
    assert threaded.skipped == loader.skipped

    mostly_bad = write_pickapic(datasets_cache / "bad.parquet", [1] * 4, corrupt={(i, "jpg_0") for i in range(3)})
    with pytest.raises(PreferenceDataError, match="rows of a batch of 4 could not be decoded"):
        PreferenceLoader(open_preferences(DataConfig(source=str(mostly_bad)), kind="pairs"), DataConfig(examples_per_epoch=4), seed=0).next_batch()


@pytest.fixture
def labels_manifest(tmp_path):
    """12 labelled images (4 desirable), one of them unreadable; colour channel 1 encodes the row."""
    rows = []
    for index in range(12):
        name = f"img/{index}.png"
        if index == 5:
            (tmp_path / "img").mkdir(exist_ok=True)
            (tmp_path / name).write_bytes(b"not a png")
        else:
            save_png(tmp_path / name, (200, index * 20, 0))
        rows.append({"prompt": f"prompt {index}", "media": name, "desirable": index % 3 == 0})
    return write_jsonl(tmp_path / "labels.jsonl", rows)


def test_resume_mid_dataset_reproduces_the_uninterrupted_batches(labels_manifest):
    config = DataConfig(source=str(labels_manifest), examples_per_epoch=5, positive_ratio=0.5, prompt_dropout=0.3)
    data = open_preferences(config, kind="labels")
    whole = PreferenceLoader(data, config, seed=11)
    expected = [whole.next_batch() for _ in range(6)]  # 30 draws over 12 rows: passes wrap and reshuffle
    first = PreferenceLoader(data, config, seed=11)
    for _ in range(2):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # plain python values
    resumed = PreferenceLoader(open_preferences(config, kind="labels"), config, seed=11)
    resumed.load_state_dict(state)
    assert all(batches_equal(resumed.next_batch(), e) for e in expected[2:])
    assert [s["row_id"] for s in resumed.skipped] == [s["row_id"] for s in whole.skipped] == ["labels.jsonl:5"]
    other_seed = PreferenceLoader(data, config, seed=12)
    assert not batches_equal(other_seed.next_batch(), expected[0])


def test_two_ranks_are_disjoint_and_concatenate_to_one_process(labels_manifest):
    data = open_preferences(DataConfig(source=str(labels_manifest)), kind="labels")
    single = PreferenceLoader(data, DataConfig(examples_per_epoch=6), seed=5)
    ranks = [PreferenceLoader(data, DataConfig(examples_per_epoch=3), seed=5, num_processes=2, process_index=r) for r in range(2)]
    for _ in range(4):
        one = single.next_batch()
        parts = [rank.next_batch() for rank in ranks]
        assert batches_equal(PreferenceBatch.cat(parts), one)
    balanced = dict(positive_ratio=0.5, prompt_dropout=0.5)
    single = PreferenceLoader(data, DataConfig(examples_per_epoch=6, **balanced), seed=5)
    ranks = [PreferenceLoader(data, DataConfig(examples_per_epoch=3, **balanced), seed=5, num_processes=2, process_index=r)
             for r in range(2)]
    for _ in range(4):
        assert batches_equal(PreferenceBatch.cat([rank.next_batch() for rank in ranks]), single.next_batch())
    # within one pass the ranks draw disjoint rows (rows 0-4: all readable, so no replacements)
    readable = open_preferences(DataConfig(source=str(labels_manifest), max_examples=5), kind="labels")
    fresh = [PreferenceLoader(readable, DataConfig(examples_per_epoch=2), seed=0, num_processes=2, process_index=r) for r in range(2)]
    drawn = [set(loader.next_batch().row_ids) for loader in fresh]
    assert len(drawn[0]) == len(drawn[1]) == 2 and not drawn[0] & drawn[1]


def test_positive_ratio_and_prompt_dropout_rates(labels_manifest):
    data = open_preferences(DataConfig(source=str(labels_manifest)), kind="labels")
    identity = lambda media: media.flatten(1)  # noqa: E731 - cache the decoded pixels: no re-decoding per draw
    config = DataConfig(examples_per_epoch=50, positive_ratio=0.8, prompt_dropout=0.2, cache_latents=True)
    loader = PreferenceLoader(data, config, seed=1, encode=identity)
    batches = [loader.next_batch() for _ in range(40)]  # 2000 draws
    desirable = torch.cat([b.labels for b in batches])
    tolerance = 4 * math.sqrt(0.8 * 0.2 / 2000)
    assert abs(desirable.mean().item() - 0.8) < tolerance  # the data hold 4 / 12 desirable
    dropped = sum(p == "" for b in batches for p in b.prompts) / 2000
    assert abs(dropped - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 2000)
    unbalanced = PreferenceLoader(data, DataConfig(examples_per_epoch=50, cache_latents=True), seed=1, encode=identity)
    rate = torch.cat([unbalanced.next_batch().labels for _ in range(10)]).mean().item()
    assert abs(rate - 4 / 12) < 0.1


def test_cached_latents_equal_fresh_encodes_and_are_encoded_once(labels_manifest):
    data = open_preferences(DataConfig(source=str(labels_manifest)), kind="labels")
    weight = torch.randn(4, 3, 2, 2)
    calls = []

    def encode(media):
        calls.append(media.shape[0])
        return torch.nn.functional.conv2d(media * 2 - 1, weight, stride=2)

    cached = PreferenceLoader(data, DataConfig(examples_per_epoch=4, cache_latents=True), seed=2, encode=encode)
    fresh = PreferenceLoader(data, DataConfig(examples_per_epoch=4), seed=2, encode=encode)
    for _ in range(9):  # three passes
        a, b = cached.next_batch(), fresh.next_batch()
        assert a.media is None and a.row_ids == b.row_ids and torch.allclose(a.latents, b.latents, atol=1e-6)
        by_hand = torch.stack([encode(data.row(int(r.split(":")[1])).media[0][None])[0] for r in a.row_ids])
        assert torch.allclose(a.latents, by_hand, atol=1e-6)
    assert cached.encoded_rows == 11  # every readable row once, then from the cache


# ------------------------------------------------------------------------------------------ diffalign prefs
def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_prefs_build_writes_manifests_that_load_back_and_resumes(tmp_path, tiny_shapes_sd, capsys):
    from diffalign.cli import main

    model = str(tiny_shapes_sd)
    common = ["prefs", "build", "--model", model, "--prompts", "shapes", "--images-per-prompt", "3",
              "--scorer", "jpeg_compressibility", "--steps", "2", "--batch-size", "2", "--no-progress", "--device", "cpu"]
    assert main([*common, "--num-prompts", "4", "--out", str(tmp_path / "whole")]) == 0
    whole = tmp_path / "whole"
    scores = read_jsonl(whole / "scores.jsonl")
    assert len(scores) == 12 and all(r["error"] is None and (whole / r["file"]).is_file() for r in scores)
    by_file = {r["file"]: r["score"] for r in scores}
    group = lambda file: [v for f, v in by_file.items() if f.split("_")[0] == file.split("_")[0]]  # noqa: E731 - a prompt's samples

    pairs = read_jsonl(whole / "pairs.jsonl")
    low, high = min(r["score"] for r in scores), max(r["score"] for r in scores)
    for pair in pairs:
        assert pair["preferred_score"] == max(group(pair["preferred"])) > pair["rejected_score"] == min(group(pair["preferred"]))
        assert pair["preferred_score"] == by_file[pair["preferred"]] and pair["rejected_score"] == by_file[pair["rejected"]]
        expected = 1 / (1 + math.exp(-((pair["preferred_score"] - low) / (high - low) - (pair["rejected_score"] - low) / (high - low))))
        assert math.isclose(pair["soft_label"], expected, rel_tol=1e-9)
    loaded = open_preferences(DataConfig(source=str(whole / "pairs.jsonl")), kind="pairs")
    assert len(loaded) == len(pairs) >= 1 and loaded.row(0).media[0].shape == (3, 32, 32)
    labels = open_preferences(DataConfig(source=str(whole / "labels.jsonl")), kind="labels")
    assert len(labels) == 12
    for row in read_jsonl(whole / "labels.jsonl"):
        values = sorted(group(row["media"]))
        assert row["desirable"] == (row["score"] > values[1])  # above the median of 3
    winners = read_jsonl(whole / "winners.jsonl")
    assert len(open_preferences(DataConfig(source=str(whole / "winners.jsonl")), kind="winners")) == len(winners) == 4
    assert all(w["score"] == max(group(w["media"])) == by_file[w["media"]] for w in winners)

    # an interrupted build (2 prompts), resumed to 4: the first prompts are not sampled again, the result is the same
    part = tmp_path / "part"
    assert main([*common, "--num-prompts", "2", "--out", str(part)]) == 0
    first_images = {p.name: p.stat().st_mtime_ns for p in (part / "images").iterdir()}
    assert main([*common, "--num-prompts", "4", "--out", str(part)]) == 2  # refuses to mix without --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*common, "--num-prompts", "4", "--out", str(part), "--resume"]) == 0
    assert all((part / "images" / name).stat().st_mtime_ns == mtime for name, mtime in first_images.items())
    assert read_jsonl(part / "scores.jsonl") == scores and read_jsonl(part / "pairs.jsonl") == pairs
    assert main([*common, "--num-prompts", "4", "--out", str(part), "--resume", "--seed", "1"]) == 2
    assert "other settings" in capsys.readouterr().err

    # the exact ShapesWorld judge as scorer
    judge = [a if a != "jpeg_compressibility" else "shapes" for a in common]
    assert main([*judge, "--num-prompts", "2", "--out", str(tmp_path / "judge")]) == 0
    assert all(0 <= r["score"] <= 1 for r in read_jsonl(tmp_path / "judge" / "scores.jsonl"))


def noisy_image(amplitude: float, seed: int, size=16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (0.5 + amplitude * (torch.rand(3, size, size, generator=generator) - 0.5)).clamp(0, 1)


def test_prefs_relabel_flips_pairs_the_scores_disagree_with(tmp_path, datasets_cache):
    from diffalign.cli import main
    from diffalign.media import load_image, save_image
    from diffalign.scorers import load

    flat, noisy = save_image(noisy_image(0.0, 0), tmp_path / "flat.png"), save_image(noisy_image(1.0, 1), tmp_path / "noisy.png")
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "preferred": "noisy.png", "rejected": "flat.png"},
                                           {"prompt": "b", "preferred": "flat.png", "rejected": "noisy.png"}])
    out = tmp_path / "relabelled"
    args = ["prefs", "relabel", str(tmp_path / "pairs.jsonl"), "--scorer", "jpeg_compressibility", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    rows = read_jsonl(out / "pairs.jsonl")
    assert [r["flipped"] for r in rows] == [True, False]
    assert all(r["preferred"] == "../flat.png" and r["rejected"] == "../noisy.png" for r in rows)
    scorer = load("jpeg_compressibility")
    s_flat, s_noisy = (float(scorer(load_image(p)[None])[0]) for p in (flat, noisy))
    assert math.isclose(rows[0]["soft_label"], 1 / (1 + math.exp(-1.0)), rel_tol=1e-6)  # min/max normalised: 1 - 0
    assert math.isclose(rows[0]["preferred_score"], s_flat, rel_tol=1e-6) and math.isclose(rows[0]["rejected_score"], s_noisy, rel_tol=1e-6)
    relabelled = open_preferences(DataConfig(source=str(out / "pairs.jsonl")), kind="pairs")
    assert torch.equal(relabelled.row(0).media[0], load_image(flat))
    scored = len(read_jsonl(out / "scores.jsonl"))
    assert main(args) == 0 and len(read_jsonl(out / "scores.jsonl")) == scored  # resumed: nothing scored again

    # a dataset of image bytes (Pick-a-Pic schema): the images are written beside the manifest
    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(t):
        buffer = io.BytesIO()
        Image.fromarray((t.permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, format="PNG")
        return buffer.getvalue()

    pq.write_table(pa.table({"caption": ["x", "y"], "jpg_0": [png(noisy_image(1.0, 1)), png(noisy_image(0.2, 2))],
                             "jpg_1": [png(noisy_image(0.0, 0)), png(noisy_image(0.9, 3))], "label_0": [1.0, 1.0],
                             "label_1": [0.0, 0.0]}), tmp_path / "pick.parquet")
    assert main(["prefs", "relabel", str(tmp_path / "pick.parquet"), "--scorer", "jpeg_compressibility",
                 "--out", str(tmp_path / "pick-out"), "--no-progress"]) == 0
    rows = read_jsonl(tmp_path / "pick-out" / "pairs.jsonl")
    assert [r["flipped"] for r in rows] == [True, False]
    back = open_preferences(DataConfig(source=str(tmp_path / "pick-out" / "pairs.jsonl")), kind="pairs")
    assert torch.allclose(back.row(0).media[0], noisy_image(0.0, 0), atol=1 / 255)


def test_prefs_topk_returns_the_k_best_and_reports_bad_input(tmp_path, capsys):
    from diffalign.cli import main
    from diffalign.media import load_image, save_image
    from diffalign.scorers import load

    amplitudes = [0.9, 0.1, 0.5, 0.0, 0.7, 0.3]
    rows = []
    for index, amplitude in enumerate(amplitudes):
        save_image(noisy_image(amplitude, index), tmp_path / f"{index}.png")
        rows.append({"prompt": f"p{index}", "media": f"{index}.png"})
    write_jsonl(tmp_path / "winners.jsonl", rows + [rows[2]])  # a duplicate (image, prompt) counts once
    out = tmp_path / "experts"
    assert main(["prefs", "topk", str(tmp_path / "winners.jsonl"), "--scorer", "jpeg_compressibility", "--k", "3",
                 "--out", str(out), "--no-progress"]) == 0
    experts = read_jsonl(out / "experts.jsonl")
    scorer = load("jpeg_compressibility")
    scores = {f"{i}.png": float(scorer(load_image(tmp_path / f"{i}.png")[None])[0]) for i in range(6)}
    best = sorted(scores, key=lambda name: -scores[name])[:3]
    assert [Path(e["media"]).name for e in experts] == best and len(set(best)) == 3
    assert len(open_preferences(DataConfig(source=str(out / "experts.jsonl")), kind="experts")) == 3

    assert main(["prefs", "relabel", str(tmp_path / "winners.jsonl"), "--scorer", "jpeg_compressibility", "--out", str(tmp_path / "r")]) == 2
    assert "diffalign prefs relabel:" in capsys.readouterr().err
    assert main(["prefs", "topk", str(tmp_path / "winners.jsonl"), "--scorer", "no_such_scorer", "--out", str(out)]) == 2
    assert "unknown scorer no_such_scorer" in capsys.readouterr().err
    assert main(["prefs", "build", "--prompts", "shapes", "--num-prompts", "2", "--images-per-prompt", "1",
                 "--scorer", "shapes", "--out", str(tmp_path / "b")]) == 2
    assert "--images-per-prompt must be >= 2" in capsys.readouterr().err


def test_build_preferences_from_a_video_model_writes_videos_that_load_back(tmp_path, tiny_model):
    from diffalign.pipelines import load
    from diffalign.preferences.build import build_preferences
    from diffalign.scorers import load as load_scorer
    from tests.tiny import SMALL_SAMPLE_SIZE

    adapter = load(str(tiny_model("wan")))
    summary = build_preferences(adapter, ["a cat walks"], load_scorer("jpeg_compressibility"), tmp_path / "video",
                                images_per_prompt=2, steps=2, size=SMALL_SAMPLE_SIZE["wan"])
    assert summary["images"] == 2 and summary["failed"] == 0
    pairs = read_jsonl(tmp_path / "video" / "pairs.jsonl")
    assert len(pairs) == 1 and pairs[0]["preferred"].endswith(".mp4") and pairs[0]["preferred_score"] > pairs[0]["rejected_score"]
    batch = PreferenceLoader(open_preferences(DataConfig(source=str(tmp_path / "video" / "pairs.jsonl")), kind="pairs"),
                             DataConfig(examples_per_epoch=1), seed=0).next_batch()
    assert batch.media.shape == (1, 2, SMALL_SAMPLE_SIZE["wan"]["num_frames"], 3, 32, 32)


def test_prefs_experts_renders_exact_shapesworld_experts(tmp_path, capsys):
    from diffalign.cli import main
    from diffalign.media import load_image
    from diffalign.scorers import load

    out = tmp_path / "experts"
    assert main(["prefs", "experts", "--prompts", "shapes", "--num-prompts", "6", "--out", str(out)]) == 0
    experts = open_preferences(DataConfig(source=str(out / "experts.jsonl")), kind="experts")
    assert len(experts) == 6
    images = torch.stack([experts.row(i).media[0] for i in range(6)])
    assert load("shapes", mode="binary")(images, [experts.prompt(i) for i in range(6)]).tolist() == [1.0] * 6
    (tmp_path / "bad.txt").write_text("a photo of a red circle\na cat on a sofa\n")
    assert main(["prefs", "experts", "--prompts", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "bad")]) == 2
    assert "prompt 1 'a cat on a sofa' is not a ShapesWorld caption" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # checked before anything is written
    assert torch.equal(load_image(out / "images" / "000000.png"), images[0])


def test_prefs_experts_renders_motion_captions_as_clips_the_video_judge_passes(tmp_path, capsys):
    """The real-video regulariser's data on ShapesWorld in motion: each caption's ground-truth clip as an MP4
    (9 frames, what shapes-video takes) that reads back through the data module and passes the video judge."""
    from diffalign.cli import main
    from diffalign.scorers import load

    out = tmp_path / "experts"
    assert main(["prefs", "experts", "--prompts", "shapes_video", "--num-prompts", "6", "--frames", "9", "--out", str(out)]) == 0
    experts = open_preferences(DataConfig(source=str(out / "experts.jsonl")), kind="experts")
    assert len(experts) == 6 and all(experts.row(i).media[0].shape == (9, 3, 32, 32) for i in range(6))
    videos = torch.stack([experts.row(i).media[0] for i in range(6)])
    assert load("shapes_video", mode="binary")(videos, [experts.prompt(i) for i in range(6)]).tolist() == [1.0] * 6
    assert main(["prefs", "experts", "--prompts", "shapes_video", "--num-prompts", "2", "--frames", "40",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--frames must be in [8, 16], got 40" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_every_pairing_pairs_each_two_samples_of_a_caption_with_different_scores(tmp_path):
    from diffalign.preferences.build import _write_build_manifests

    scores = {0: [0.2, 0.9, 0.9, 0.5], 1: [0.4, 0.4, 0.4, 0.4], 2: [0.1, 0.3, 0.3, 0.3]}
    prompts = ["a red circle", "a blue square", "a red circle"]  # caption 0 drawn twice: its 8 samples pool
    rows = [{"file": f"images/{i:06d}_{j}.png", "prompt": prompts[i], "modality": "image", "score": s, "error": None}
            for i, values in scores.items() for j, s in enumerate(values)]
    summary = _write_build_manifests(tmp_path, rows, prompts, None, "every")
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    pooled = scores[0] + scores[2]
    expected = sum(1 for a in range(8) for b in range(a + 1, 8) if pooled[a] != pooled[b])
    assert summary["pairs"] == len(pairs) == expected and summary["pairing"] == "every"
    assert all(p["prompt"] == "a red circle" and p["preferred_score"] > p["rejected_score"] for p in pairs)
    assert all(0.5 < p["soft_label"] <= 1 for p in pairs)
    (tmp_path / "bw").mkdir()
    best_worst = _write_build_manifests(tmp_path / "bw", rows, prompts, None)
    assert best_worst["pairs"] == 2  # prompts 0 and 2; prompt 1 is a tie
