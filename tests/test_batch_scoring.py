"""``diffalign score`` / ``score_files``: a folder with good, corrupt, truncated and non-media files."""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.cli import main
from diffalign.media import save_video
from diffalign.scorers import SCORERS, Scorer, register_scorer
from diffalign.scorers.batch import PromptTable, collect_files, score_files

CALLS: dict[str, int] = {"brightness": 0, "prompt_words": 0}


@register_scorer("test_brightness", overwrite=True)
class Brightness(Scorer):
    """Mean pixel value (a cheap real scorer for these tests); counts its calls."""

    name = "test_brightness"
    needs_prompts = False
    batch_size = 4

    def score_images(self, images, prompts):
        CALLS["brightness"] += 1
        return images.mean(dim=(1, 2, 3))


@register_scorer("test_prompt_words", overwrite=True)
class PromptWords(Scorer):
    """Number of words of the prompt; fails on very bright images (to test failure isolation)."""

    name = "test_prompt_words"
    batch_size = 4

    def score_images(self, images, prompts):
        CALLS["prompt_words"] += 1
        if (images.mean(dim=(1, 2, 3)) > 0.9).any():
            raise RuntimeError("too bright to read")
        return torch.tensor([float(len(p.split())) for p in prompts])


class Interrupting(Brightness):
    """Brightness that is interrupted (Ctrl-C) on its ``stop_at``-th call."""

    name = "test_brightness"

    def __init__(self, stop_at: int):
        super().__init__()
        self.stop_at, self.calls = stop_at, 0

    def score_images(self, images, prompts):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return super().score_images(images, prompts)


def rgb(seed: int, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255 * scale).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Good images and a video, a corrupt PNG, a truncated JPEG, text posing as an image, a stray text file."""
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rgb(1, 32, 32)).save(root / "good1.png")
    (root / "good1.txt").write_text("a red cat on a mat\n")  # sidecar prompt
    Image.fromarray(rgb(2, 32, 32, 0.5)).save(root / "good2.png")
    Image.fromarray(rgb(3, 24, 40)).save(root / "sub" / "good3.png")
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(root / "bright.png")  # prompt_words fails on it
    save_video(torch.rand(4, 3, 32, 32), root / "clip.mp4", fps=4)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    Image.fromarray(rgb(4, 64, 64)).save(root / "whole.jpg", quality=90)
    data = (root / "whole.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "whole.jpg").unlink()
    (root / "fake.jpg").write_text("this is not an image")
    (root / "notes.txt").write_text("a stray text file")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"file": "media/good2.png", "prompt": "two blue dogs"},
                {"path": "sub/good3.png", "prompt": "a green tree in the city"},  # matched by file name
                {"file": "media/clip.mp4", "prompt": "a video"},
                {"file": "media/bright.png", "prompt": "white"},
                {"file": "media/corrupt.png", "prompt": "broken"},
            ]
        )
        + "\n"
    )
    return root, prompts


def expected_brightness(path: Path) -> float:
    if path.suffix == ".mp4":
        return float(np.stack(list(iio.imiter(path))).astype(np.float64).mean() / 255)
    return float(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).mean() / 255)


GOOD = {"good1.png": "a red cat on a mat", "good2.png": "two blue dogs", "good3.png": "a green tree in the city", "clip.mp4": "a video"}
BAD = {"corrupt.png", "truncated.jpg", "fake.jpg"}


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["file"]).name: r for r in rows}


def number(value) -> float | None:
    return None if value in (None, "") else float(value)


def cli(*args) -> int:
    return main(["score", *map(str, args), "--no-progress"])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_folder_scores_good_files_lists_bad_ones_and_resumes(folder, tmp_path, monkeypatch, capsys, suffix):
    root, prompts = folder
    monkeypatch.chdir(tmp_path)
    out = tmp_path / f"scores{suffix}"
    CALLS.update(brightness=0, prompt_words=0)
    code = cli(root, "--scorer", "test_brightness,test_prompt_words", "--prompts", prompts, "--out", out, "--batch-size", 3)
    assert code == 1  # some files failed
    assert CALLS["brightness"] > 0

    rows = by_name(read_rows(out))
    assert set(rows) == set(GOOD) | BAD | {"bright.png"}  # notes.txt is not a row; good1.txt is a prompt
    for name, prompt in GOOD.items():
        row = rows[name]
        assert not row["error"], row
        assert row["prompt"] == prompt
        assert row["modality"] == ("video" if name.endswith(".mp4") else "image")
        assert number(row["test_brightness"]) == pytest.approx(expected_brightness(Path(row["file"])), abs=1e-5)
        assert number(row["test_prompt_words"]) == len(prompt.split())
    for name in BAD:
        assert name in rows[name]["error"] and number(rows[name]["test_brightness"]) is None
    assert "cannot read image" in rows["corrupt.png"]["error"] and "truncated" in rows["truncated.jpg"]["error"]
    # the prompt scorer failed on the bright image alone (its batch was retried item by item); brightness still scored
    bright = rows["bright.png"]
    assert bright["error"] == "test_prompt_words: RuntimeError: too bright to read"
    assert number(bright["test_brightness"]) == pytest.approx(250 / 255, abs=1e-6)

    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert (summary["files"], summary["ok"], summary["failed"]) == (8, 4, 4)
    assert {Path(f["file"]).name for f in summary["failures"]} == BAD | {"bright.png"}
    assert [Path(p).name for p in summary["skipped"]] == ["notes.txt"]
    values = [expected_brightness(Path(rows[n]["file"])) for n in [*GOOD, "bright.png"]]
    stats = summary["scorers"]["test_brightness"]
    assert stats["count"] == 5
    assert stats["mean"] == pytest.approx(statistics.fmean(values), abs=1e-5)
    assert stats["std"] == pytest.approx(statistics.pstdev(values), abs=1e-5)
    assert summary["scorers"]["test_prompt_words"]["mean"] == pytest.approx(statistics.fmean(len(p.split()) for p in GOOD.values()))
    printed = capsys.readouterr().out
    assert "4 ok, 4 failed" in printed and "notes.txt" in printed and "fake.jpg" in printed

    # a second run over the same output scores nothing and leaves the rows alone
    before = out.read_bytes()
    CALLS.update(brightness=0, prompt_words=0)
    assert cli(root, "--scorer", "test_brightness,test_prompt_words", "--prompts", prompts, "--out", out) == 1
    assert CALLS == {"brightness": 0, "prompt_words": 0}
    assert out.read_bytes() == before
    assert json.loads(Path(f"{out}.summary.json").read_text())["already_done"] == 8


def test_interrupted_run_keeps_finished_batches_and_resumes(folder, tmp_path):
    root, _ = folder
    good = [root / "good1.png", root / "good2.png", root / "sub" / "good3.png", root / "clip.mp4", root / "bright.png"]
    for suffix in (".csv", ".parquet"):
        out = tmp_path / f"partial{suffix}"
        with pytest.raises(KeyboardInterrupt):
            score_files(good, Interrupting(stop_at=3), out=out, batch_size=2, progress=False)
        first = by_name(read_rows(out))
        assert set(first) == {"good1.png", "good2.png"}  # the first batch was on disk before the crash
        assert not Path(f"{out}.partial.jsonl").exists()

        counting = Interrupting(stop_at=0)
        result = score_files(good, counting, out=out, batch_size=2, progress=False)
        rows = read_rows(out)
        assert len(rows) == 5 and len(by_name(rows)) == 5  # every file once
        assert result.scored_now == 3 and result.already_done == 2 and result.ok
        assert counting.calls == 3  # good3 (24x40) and bright/clip in separate shape groups; none of the old ones


def test_retry_failed_rescores_fixed_files_only(folder, tmp_path):
    root, prompts = folder
    out = tmp_path / "scores.jsonl"
    first = score_files([root], "test_brightness", out=out, progress=False)
    assert {Path(r["file"]).name for r in first.failed} == BAD
    first_lines = out.read_text().splitlines()
    Image.fromarray(rgb(9, 16, 16)).save(root / "corrupt.png")  # the user repairs one file
    CALLS.update(brightness=0)
    second = score_files([root], "test_brightness", out=out, retry_failed=True, progress=False)
    assert CALLS["brightness"] == 1  # only the repaired file was scored
    assert {Path(r["file"]).name for r in second.failed} == BAD - {"corrupt.png"}
    assert by_name(second.rows)["corrupt.png"]["test_brightness"] == pytest.approx(expected_brightness(root / "corrupt.png"), abs=1e-6)
    lines = out.read_text().splitlines()
    assert lines[: len(first_lines)] == first_lines  # earlier rows untouched; one new row per retried file
    assert len(lines) == len(first_lines) + len(BAD)


def test_python_api_in_memory_and_missing_prompts(folder):
    root, _ = folder
    result = score_files([root / "good2.png", root / "good1.png"], ["test_prompt_words", "test_brightness"], progress=False)
    rows = by_name(result.rows)
    assert rows["good1.png"]["test_prompt_words"] == 6.0 and rows["good1.png"]["error"] is None
    assert "no prompt for this file" in rows["good2.png"]["error"]  # no table entry, no sidecar
    assert rows["good2.png"]["test_brightness"] is not None  # prompt-free scorers still score it
    weighted = score_files([root / "good1.png"], "test_brightness:2,test_prompt_words:1", progress=False)
    (row,) = weighted.rows
    assert row["test_brightness:2,test_prompt_words:1"] == pytest.approx(2 * rows["good1.png"]["test_brightness"] + 6, abs=1e-6)


def test_prompt_table_csv_and_errors(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    table_file = tmp_path / "p.csv"
    table_file.write_text("path,prompt\na.png,a cat\n")
    assert PromptTable.from_file(table_file).get(tmp_path / "a.png") == "a cat"
    bad = tmp_path / "bad.csv"
    bad.write_text("name,text\na.png,a cat\n")
    with pytest.raises(ValueError, match="needs a file/path/filename column"):
        PromptTable.from_file(bad)


def test_output_with_other_scorers_and_bad_arguments_exit_2(folder, tmp_path, capsys):
    root, _ = folder
    out = tmp_path / "scores.csv"
    assert cli(root / "good1.png", "--scorer", "test_brightness", "--out", out) == 0
    assert cli(root / "good2.png", "--scorer", "test_prompt_words", "--out", out) == 2
    assert "already holds columns" in capsys.readouterr().err
    assert cli(root / "good1.png", "--scorer", "no_such_scorer", "--out", tmp_path / "x.csv") == 2
    assert "unknown scorer 'no_such_scorer'" in capsys.readouterr().err
    assert cli(root / "good1.png", "--scorer", "test_brightness", "--out", tmp_path / "x.xlsx") == 2
    assert cli(root / "missing.png", "--scorer", "test_brightness", "--out", tmp_path / "y.csv") == 2
    assert "no such file" in capsys.readouterr().err


def test_list_shows_registered_scorers(capsys):
    assert main(["score", "--list"]) == 0
    printed = capsys.readouterr().out
    for name in ("critic", "test_brightness", "test_prompt_words"):
        assert name in SCORERS
        assert name in printed
    assert "Mean pixel value" in printed


def test_collect_files_keeps_media_and_explicit_files(folder):
    root, _ = folder
    found = collect_files([root, root / "notes.txt"])
    names = sorted(p.name for p in found.files)
    assert "notes.txt" in names and "good1.txt" not in names  # named explicitly -> attempted
    assert found.skipped == []


def test_jpeg_compressibility_over_a_folder(folder, tmp_path):
    """A real built-in scorer end to end: −kB of the quality-95 JPEG of each image (DDPO)."""
    root, _ = folder
    out = tmp_path / "jpeg.csv"
    assert cli(root, "--scorer", "jpeg_compressibility", "--out", out) == 1
    rows = by_name(read_rows(out))
    for name in ("good1.png", "good2.png", "good3.png", "bright.png"):
        buffer = io.BytesIO()
        Image.open(rows[name]["file"]).convert("RGB").save(buffer, format="JPEG", quality=95)
        assert number(rows[name]["jpeg_compressibility"]) == pytest.approx(-buffer.tell() / 1000, rel=1e-6)
    assert {n for n, r in rows.items() if r["error"]} == BAD
