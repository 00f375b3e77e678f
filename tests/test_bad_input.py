"""Bad input at every entry point: exit status 2, one line naming the value, nothing written.

Every case must fail before a model loads (the whole matrix runs in seconds); the Python API
raises :class:`diffalign.errors.UserError` with the message the CLI prints.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

import diffalign
from diffalign.cli import main
from diffalign.errors import MissingPathError, UnknownNameError, UserError, number

NOT_CACHED = "nosuchorg/nosuchmodel"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} | {
        str(p.relative_to(root)) + "/": b"" for p in root.rglob("*") if p.is_dir()
    }


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with an existing run, an existing output file, a prompt file, a media-less folder
    and broken TOML/JSONL files; the current directory, so default outputs would land here too."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "summary.json").write_text("{}\n")
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    (tmp_path / "bad.toml").write_text("[run\nepochs = 1\n")
    (tmp_path / "bad.jsonl").write_text('{"file": "a.png", "prompt": "x"}\n{not json\n')
    (tmp_path / "scores.csv").write_text("file,prompt,error\n")
    (tmp_path / "nomedia").mkdir()
    (tmp_path / "nomedia" / "notes.txt").write_text("not an image\n")
    # JSON files cut short by a kill or a full disk: a model folder, a demo --long run, a checkpoint
    (tmp_path / "broken_model").mkdir()
    (tmp_path / "broken_model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipel')
    (tmp_path / "long").mkdir()
    (tmp_path / "long" / "settings.json").write_text('{"algorithm": "awm", "mod')
    (tmp_path / "long" / "curve.jsonl").write_text("")
    (tmp_path / "cut_run" / "checkpoints" / "epoch_000002").mkdir(parents=True)
    (tmp_path / "cut_run" / "checkpoints" / "epoch_000002" / "trainer_state.json").write_text('{"epoch": 2, "glo')
    # files that are not UTF-8 text (a binary saved under the expected name)
    (tmp_path / "binary.jsonl").write_bytes(b"\xa5\x00\xff prompts")
    (tmp_path / "binary.txt").write_bytes(b"\xa5\x00\xff prompts")
    (tmp_path / "binary_run").mkdir()
    (tmp_path / "binary_run" / "config.toml").write_bytes(b"\xa5\x00\xff [run]")
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "blue.png")
    (tmp_path / "blue.txt").write_bytes(b"\xa5 a blue square")  # its prompt sidecar, not UTF-8
    return tmp_path


TRAIN = ["train", "awm_shapes", "--out", "run"]
SAMPLE = ["sample", "--prompt", "a red circle", "--out", "grid.png"]
SCORE = ["score", "red.png", "--out", "scores.jsonl"]
EVAL = ["eval", "shapes", "--model", "oracle", "--out", "evalrun", "--no-progress"]
DEMO = ["demo", "--out", "demo2", "--no-progress"]
BUILD = ["prefs", "build", "--prompts", "prompts.txt", "--scorer", "shapes", "--out", "prefs"]

#: (argv, text the one-line error must contain)
CASES = [
    # train
    ([*TRAIN, "--set", "model.source=/nonexistent/folder"], "/nonexistent/folder"),
    ([*TRAIN, "--set", f"model.source={NOT_CACHED}"], f"{NOT_CACHED!r} is not in the local Hugging Face cache"),
    ([*TRAIN, "--set", "reward.spec=nosuch"], "'nosuch'"),
    ([*TRAIN, "--set", "reward.spec=pickscore"], "'yuvalkirstain/PickScore_v1' are not cached"),
    ([*TRAIN, "--set", "sampling.steps=1e99"], "sampling.steps = 1e+99"),
    ([*TRAIN, "--set", "sampling.steps=0"], "sampling.steps must be positive, got 0"),
    ([*TRAIN, "--set", "train.learning_rate=nan"], "train.learning_rate = nan"),
    ([*TRAIN, "--set", "sampling.guidance_scale=inf"], "sampling.guidance_scale = inf"),
    ([*TRAIN, "--set", "run.epochs=-3"], "run.epochs must be positive, got -3"),
    ([*TRAIN, "--set", "prompts.train=missing.txt"], "missing.txt"),
    ([*TRAIN, "--set", "prompts.train=binary.txt"], "binary.txt: not UTF-8 text (prompt file)"),
    ([*TRAIN, "--set", "nosuchsection.key=1"], "nosuchsection"),
    (["train", "nosuch_recipe"], "'nosuch_recipe'"),
    (["train", "bad.toml"], "bad.toml: not valid TOML"),
    ([*TRAIN, "--resume", "run"], "--resume run: no complete checkpoint"),
    (["train", "--resume", "missing_run"], "missing_run does not exist"),
    (["train", "awm_shapes", "--resume", "cut_run"], "epoch_000002/trainer_state.json: not valid JSON"),
    ([*TRAIN, "--resume"], "--resume: the run folder run holds no complete checkpoint"),
    # sample
    ([*SAMPLE, "--steps", "0"], "--steps must be an integer >= 1 and <= 10000, got 0"),
    ([*SAMPLE, "--steps", "100000"], "--steps must be an integer >= 1 and <= 10000, got 100000"),
    ([*SAMPLE, "--guidance-scale", "nan"], "--guidance-scale must be a finite number, got nan"),
    ([*SAMPLE, "--num-images", "-1"], "--num-images must be an integer >= 1, got -1"),
    ([*SAMPLE, "--prompts", "missing.txt"], "prompt file missing.txt does not exist"),
    ([*SAMPLE, "--model", "/nonexistent/folder"], "/nonexistent/folder"),
    ([*SAMPLE, "--model", NOT_CACHED], f"{NOT_CACHED!r} is not in the local Hugging Face cache"),
    ([*SAMPLE, "--model", "broken_model"], "broken_model/model_index.json: not valid JSON"),
    ([*SAMPLE, "--run", "binary_run"], "binary_run/config.toml: not UTF-8 text (run config)"),
    (["sample", "--prompts", "binary.txt", "--out", "grid.png"], "binary.txt: not UTF-8 text (prompt file)"),
    (["sample", "--out", "nomedia"], "--out nomedia is a folder"),
    # score
    (["score", "nomedia", "--scorer", "jpeg_compressibility", "--out", "s.jsonl"], "no image or video files in nomedia"),
    ([*SCORE, "--scorer", "pickscore", "--prompts", "missing.jsonl"], "prompts file missing.jsonl does not exist"),
    ([*SCORE, "--scorer", "jpeg_compressibility", "--prompts", "bad.jsonl"], "bad.jsonl:2: not valid JSON"),
    ([*SCORE, "--scorer", "nosuch"], "'nosuch'"),
    ([*SCORE, "--scorer", "pickscore"], "pickscore weights 'yuvalkirstain/PickScore_v1' are not cached"),
    ([*SCORE, "--scorer", "jpeg_compressibility", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["score", "red.png", "--scorer", "jpeg_compressibility", "--out", "x.xlsx"], "x.xlsx"),
    ([*SCORE, "--scorer", "jpeg_compressibility", "--set", "oops"], "--set 'oops': expected COLUMN.KEY=VALUE"),
    (["score", "missing.png", "--scorer", "jpeg_compressibility", "--out", "scores.csv"], "missing.png"),
    (["score", "blue.png", "--scorer", "shapes", "--out", "blue_scores.jsonl"], "blue.txt: not UTF-8 text (prompt sidecar)"),
    # eval
    ([*EVAL, "--steps", "0"], "--steps must be an integer >= 1 and <= 10000, got 0"),
    ([*EVAL, "--guidance-scale", "nan"], "--guidance-scale must be a finite number, got nan"),
    ([*EVAL, "--images-per-prompt", "0"], "--images-per-prompt must be an integer >= 1, got 0"),
    ([*EVAL, "--subset", "0"], "--max-prompts-per-task must be an integer >= 1, got 0"),
    ([*EVAL, "--prompts", "missing.jsonl"], "missing.jsonl does not exist"),
    ([*EVAL, "--prompts", "binary.jsonl"], "binary.jsonl: not UTF-8 text (prompt suite)"),
    (["eval", "shapes-video", "--model", "oracle", "--prompts", "binary.jsonl", "--out", "evalrun"], "binary.jsonl: not UTF-8 text"),
    (["eval", "vbench", "--model", "shapes-video", "--vbench-prompts", "binary.jsonl", "--out", "evalrun"],
     "binary.jsonl: not UTF-8 text (VBench prompt file)"),
    (["eval", "shapes", "--model", "/nonexistent/folder", "--out", "evalrun"], "/nonexistent/folder"),
    (["eval", "geneval", "--images", "missing_images", "--out", "evalrun"], "missing_images: no such folder of GenEval images"),
    (["eval", "geneval", "--model", "shapes-sd", "--steps", "0", "--out", "evalrun"], "--steps must be an integer >= 1"),
    # demo
    ([*DEMO, "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
    ([*DEMO, "--model", "/nonexistent/folder"], "/nonexistent/folder"),
    ([*DEMO, "--set", "train.learning_rate=nan"], "train.learning_rate = nan"),
    (["demo", "--out", "demo", "--no-progress"], "demo already holds a demo run"),
    (["demo", "--long", "--resume", "--out", "long", "--no-progress"], "long/settings.json: not valid JSON"),
    # prefs
    ([*BUILD[:-4], "--scorer", "nosuch", "--out", "prefs"], "unknown scorer nosuch"),
    ([*BUILD, "--images-per-prompt", "1"], "--images-per-prompt must be >= 2"),
    ([*BUILD, "--guidance-scale", "nan"], "--guidance-scale must be a finite number, got nan"),
    ([*BUILD, "--model", "/nonexistent/folder"], "--model /nonexistent/folder: no such folder"),
    ([*BUILD[:-4], "--scorer", "pickscore", "--out", "prefs"], "pickscore weights 'yuvalkirstain/PickScore_v1' are not cached"),
    (["prefs", "experts", "--num-prompts", "0", "--out", "experts"], "--num-prompts must be >= 1, got 0"),
    (["prefs", "relabel", "missing_data.jsonl", "--scorer", "shapes", "--out", "relabelled"], "missing_data.jsonl"),
    (["prefs", "topk", "missing_data", "--scorer", "shapes", "--k", "0", "--out", "top"], "--k must be >= 1, got 0"),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(work, capsys, argv, expected):
    before = _snapshot(work)
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1 and lines[0].startswith(f"diffalign {argv[0]}"), lines
    assert expected in lines[0], lines[0]
    assert _snapshot(work) == before  # no partial output; the existing run, demo and scores are untouched


def _cli_message(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    return line.split(": ", 1)[1]


@pytest.mark.parametrize("override", ["model.source=/nonexistent/folder", "reward.spec=nosuch", "sampling.steps=1e99",
                                      "train.learning_rate=nan", "prompts.train=missing.txt", f"model.source={NOT_CACHED}"])
def test_trainer_raises_the_message_the_cli_prints(work, capsys, override):
    from diffalign.training.trainer import Trainer

    message = _cli_message([*TRAIN, "--set", override], capsys)
    with pytest.raises(UserError) as raised:
        Trainer("awm_shapes", overrides=[override], run_dir=work / "run")
    assert str(raised.value) == message


def test_score_files_raises_the_message_the_cli_prints(work, capsys):
    from diffalign.scorers.batch import score_files

    cases = [
        (["nomedia"], "jpeg_compressibility", {}),
        (["red.png"], "pickscore", {"prompts": "missing.jsonl"}),
        (["red.png"], "pickscore", {}),
        (["red.png"], "nosuch", {}),
    ]
    for paths, scorer, options in cases:
        argv = ["score", *paths, "--scorer", scorer, "--out", "s.jsonl"] + [f"--{k}={v}" for k, v in options.items()]
        message = _cli_message(argv, capsys)
        with pytest.raises(UserError) as raised:
            score_files(paths, scorer, out="s.jsonl", **options)
        assert str(raised.value) == message
    assert not (work / "s.jsonl").exists()


def test_demo_sample_and_load_raise_the_cli_message(work, capsys):
    from diffalign.demo import run_demo
    from diffalign.pipelines import load
    from diffalign.sample import read_prompts

    message = _cli_message([*DEMO, "--epochs", "0"], capsys)
    with pytest.raises(UserError, match=message):
        run_demo("demo2", epochs=0)
    message = _cli_message(["demo", "--out", "demo"], capsys)
    with pytest.raises(FileExistsError) as raised:  # still the type it was, and a UserError
        run_demo("demo")
    assert isinstance(raised.value, UserError) and str(raised.value) == message
    message = _cli_message([*SAMPLE, "--prompts", "missing.txt"], capsys)
    with pytest.raises(MissingPathError) as raised:
        read_prompts("missing.txt")
    assert str(raised.value) == message and isinstance(raised.value, FileNotFoundError)
    with pytest.raises(UserError, match=NOT_CACHED):
        load(NOT_CACHED)
    assert not (work / "demo2").exists()


@pytest.mark.parametrize("flag, value, keyword", [("--steps", "0", "steps"), ("--steps", "1000000", "steps"),
                                                  ("--guidance-scale", "nan", "guidance_scale"),
                                                  ("--images-per-prompt", "0", "images_per_prompt"),
                                                  ("--subset", "0", "max_prompts_per_task")])
def test_run_shapes_eval_raises_the_cli_message(work, capsys, flag, value, keyword):
    from diffalign.eval.benchmark import BenchmarkError
    from diffalign.eval.shapes_eval import GroundTruthSampler, run_shapes_eval

    message = _cli_message([*EVAL, flag, value], capsys)
    typed = float(value) if keyword == "guidance_scale" else int(value)
    with pytest.raises(BenchmarkError) as raised:
        run_shapes_eval(GroundTruthSampler(), work / "evalrun", progress=False, **{keyword: typed})
    assert isinstance(raised.value, UserError)
    assert message == str(raised.value).replace(keyword, "--" + keyword.replace("_", "-"))
    assert not (work / "evalrun").exists()


def test_prefs_api_raises_the_cli_message(work, capsys):
    from diffalign.preferences.build import build_preferences

    message = _cli_message([*BUILD, "--images-per-prompt", "1"], capsys)
    with pytest.raises(UserError) as raised:
        build_preferences(None, ["a red circle"], None, work / "prefs", images_per_prompt=1)
    assert message == "-" * 2 + str(raised.value).replace("_", "-", 2)  # the option's name, the same text
    assert not (work / "prefs").exists()


def test_checks_refuse_instead_of_clamping():
    assert diffalign.UserError is UserError and issubclass(UserError, ValueError)
    assert number(3, "x", low=1, high=5, integer=True) == 3
    for bad in (0, 6, math.nan, math.inf, True, 2.5, "3"):
        with pytest.raises(UserError, match="x must be"):
            number(bad, "x", low=1, high=5, integer=True)
    with pytest.raises(UserError, match="> 0, got 0"):
        number(0.0, "x", low=0, low_open=True)
    from diffalign.scorers import SCORERS

    with pytest.raises(KeyError) as raised:  # existing `except KeyError` keeps working
        SCORERS.get("nosuch")
    assert isinstance(raised.value, UnknownNameError) and str(raised.value).startswith("unknown scorer 'nosuch'")


def test_internal_errors_keep_their_traceback(monkeypatch):
    import diffalign.sample as sample

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(sample, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["sample"])
