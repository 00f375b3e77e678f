"""``diffalign demo`` end to end on a tiny ShapesWorld model (the shipped-model run is in the slow tests)."""
from __future__ import annotations

import json

import pytest
import torch

TINY_DEMO = ["sampling.batch_size=4", "sampling.batches_per_epoch=1", "sampling.group_size=2", "sampling.steps=3",
             "train.batch_size=2", "train.updates_per_epoch=1", "eval.steps=2", "prompts.num_eval=4", "eval.batch_size=4", "run.log_with=",
             "run.progress=false", "awm.train_timesteps=1"]


def test_demo_writes_before_after_from_the_base_model(tmp_path, tiny_shapes_models):
    """The files and tables, and "before" is the untrained model (that "after" differs is the next tests')."""
    from diffalign.demo import run_demo
    from diffalign.eval.shapes_eval import run_shapes_eval
    from diffalign.pipelines import load

    model = str(tiny_shapes_models / "shapes-flow")
    result = run_demo(tmp_path / "demo", algorithm="awm", model=model, epochs=1, prompts_per_task=1,
                      images_per_prompt=1, overrides=TINY_DEMO, progress=False, log=lambda *a: None)
    for name in ("summary", "before_after", "reward_curve"):
        assert result.paths[name].is_file(), name
    summary = json.loads((result.out / "summary.json").read_text())
    assert set(summary["before"]["tasks"]) == set(summary["after"]["tasks"]) and len(summary["before"]["tasks"]) == 6
    assert "| **overall** |" in result.paths["summary"].read_text()
    # "before" is the base model: the same numbers as a standalone evaluation of a fresh load
    base = run_shapes_eval(load(model), tmp_path / "base", images_per_prompt=1, steps=summary["eval_steps"],
                           guidance_scale=summary["eval_guidance_scale"], seed=0, max_prompts_per_task=1,
                           progress=False, save_images=False)
    assert base["tasks"] == summary["before"]["tasks"]
    before_rows = (result.out / "before" / "results.jsonl").read_text().splitlines()
    assert len(before_rows) == 6
    lora = result.out / "train" / "final"
    assert any(lora.iterdir())
    # a second demo into the same folder is refused instead of mixing runs
    with pytest.raises(FileExistsError):
        run_demo(tmp_path / "demo", model=model, epochs=1, overrides=TINY_DEMO, progress=False, log=lambda *a: None)


def test_long_demo_curve_table_and_grid_from_the_full_suite(tmp_path, tiny_shapes_models, capsys):
    """``demo --long``: the full suite at the start and the end of a CPU-minutes budget, the per-task table,
    the curve, and "before" equal to a standalone full ShapesEval of the untrained model."""
    from PIL import Image

    from diffalign.demo import run_long_demo
    from diffalign.errors import UserError
    from diffalign.eval.shapes_eval import run_shapes_eval
    from diffalign.pipelines import load

    model = str(tiny_shapes_models / "shapes-sd")
    small = [item for item in TINY_DEMO if not item.startswith("eval.")]
    result = run_long_demo(tmp_path / "long", algorithm="awm", model=model, minutes=0.02, every=0.01, eval_steps=1,
                           overrides=small, log=lambda *a: None)
    summary = json.loads((result.out / "summary.json").read_text())
    printed = capsys.readouterr().out  # the epoch line counts the budget, not a sentinel epoch total
    assert "of 0.02 CPU-minutes): " in printed and "/1000000" not in printed
    curve = [json.loads(line) for line in (result.out / "curve.jsonl").read_text().splitlines()]
    assert curve == summary["curve"] and len(curve) >= 2 and curve[0]["minutes"] == 0.0
    assert curve[-1]["minutes"] >= 0.02 and summary["epochs"] == curve[-1]["epoch"] >= 1
    assert [p["minutes"] for p in curve] == sorted(p["minutes"] for p in curve)
    assert set(summary["minutes_to"]) == {"0.6", "0.8"}
    table = result.paths["summary"].read_text()
    assert all(f"| {task} |" in table for task in summary["before"]["tasks"]) and len(summary["before"]["tasks"]) == 6
    base = run_shapes_eval(load(model), tmp_path / "base", steps=1, guidance_scale=4.0, progress=False,
                           save_images=False)
    assert base["tasks"] and {k: v["accuracy"] for k, v in base["tasks"].items()} == summary["before"]["tasks"]
    assert len((result.out / "before" / "results.jsonl").read_text().splitlines()) == sum(
        1 for _ in (result.out / "after" / "results.jsonl").read_text().splitlines())
    for name in ("before_after", "curve"):
        assert Image.open(result.paths[name]).size[0] > 100, name
    with pytest.raises(UserError, match="long demo algorithm"):
        run_long_demo(tmp_path / "dpo", algorithm="dpo", model=model, log=lambda *a: None)
    with pytest.raises(UserError, match="minutes must be a number > 0"):
        run_long_demo(tmp_path / "zero", model=model, minutes=0, log=lambda *a: None)
    with pytest.raises(FileExistsError):
        run_long_demo(tmp_path / "long", model=model, log=lambda *a: None)


def test_long_demo_resumes_after_an_interruption_as_the_uninterrupted_run(tmp_path, tiny_shapes_models, monkeypatch):
    """Killed during its last evaluation and resumed, ``demo --long`` trains on from its last checkpointed point
    and ends with the weights of the uninterrupted run (the CPU clock is made to tick a fixed amount per read,
    so both runs evaluate at the same epochs); the unrecorded evaluation is moved aside, not overwritten."""
    import hashlib
    import shutil
    import types

    import diffalign.eval.curves as curves
    from diffalign.demo import run_long_demo
    from diffalign.errors import OutputExistsError, UserError

    ticks = {"now": 0.0}

    def process_time() -> float:  # 0.375 s of "CPU" between two reads: an epoch costs 1/160 minute
        ticks["now"] += 0.375
        return ticks["now"]

    monkeypatch.setattr(curves, "time", types.SimpleNamespace(process_time=process_time))
    real_eval = curves.full_shapes_eval
    seen: dict[str, dict[int, str]] = {}
    fail_at = {"epoch": None}

    def recording_eval(trainer, out, **kwargs):
        weights = b"".join(v.double().numpy().tobytes() for v in trainer.trainable_state_dict().values())
        seen.setdefault(run, {})[trainer.epoch] = hashlib.sha256(weights).hexdigest()
        result = real_eval(trainer, out, **kwargs)
        if trainer.epoch == fail_at["epoch"]:
            raise KeyboardInterrupt  # the process dies after the suite ran, before its point is written
        return result

    monkeypatch.setattr(curves, "full_shapes_eval", recording_eval)
    model = str(tiny_shapes_models / "shapes-sd")
    # a reward that varies on the untrained tiny model (the judge gives it 0 everywhere), so the weights move
    small = [item for item in TINY_DEMO if not item.startswith("eval.")] + [
        "train.learning_rate=0.05", "reward.spec=jpeg_incompressibility", "reward.options={}"]
    kwargs = dict(algorithm="awm", model=model, minutes=0.02, every=0.01, eval_steps=1, overrides=small,
                  log=lambda *a: None)
    run = "whole"
    whole = run_long_demo(tmp_path / "whole", **kwargs)
    epochs = [p["epoch"] for p in whole.summary["curve"]]
    assert epochs == [0, 2, 4]

    run, fail_at["epoch"], ticks["now"] = "cut", 4, 0.0
    with pytest.raises(KeyboardInterrupt):
        run_long_demo(tmp_path / "cut", **kwargs)
    assert (tmp_path / "cut" / "after" / "results.jsonl").exists() and not (tmp_path / "cut" / "summary.json").exists()
    with pytest.raises(OutputExistsError, match="--resume"):
        run_long_demo(tmp_path / "cut", **kwargs)
    with pytest.raises(UserError, match="seed"):
        run_long_demo(tmp_path / "cut", **{**kwargs, "seed": 1}, resume=True)
    torn = tmp_path / "torn"  # a copy whose curve ends in a line the kill cut short
    shutil.copytree(tmp_path / "cut", torn)
    with (torn / "curve.jsonl").open("a") as f:
        f.write('{"minutes": 0.0')
    with pytest.raises(UserError, match=r"curve.jsonl:3: not valid JSON"):
        run_long_demo(torn, **kwargs, resume=True)
    run, fail_at["epoch"] = "resumed", None
    resumed = run_long_demo(tmp_path / "cut", **kwargs, resume=True)

    assert len(set(seen["whole"].values())) == 3  # training changed the weights between the points
    assert seen["cut"] == {e: seen["whole"][e] for e in (0, 2, 4)}
    assert seen["resumed"] == {4: seen["whole"][4]}  # two epochs retrained from the epoch-2 checkpoint, bit for bit
    assert [p["epoch"] for p in resumed.summary["curve"]] == epochs
    assert resumed.summary["before"] == whole.summary["before"] and resumed.summary["after"]["epoch"] == 4
    assert (tmp_path / "cut" / "after.interrupted1" / "results.jsonl").exists()
    assert resumed.paths["before_after"].exists()
    with pytest.raises(OutputExistsError, match="finished"):
        run_long_demo(tmp_path / "cut", **kwargs, resume=True)


@pytest.mark.parametrize("given, named", [(["--video"], "--video"), (["--epochs", "3"], "--epochs"),
                                           (["--prompts-per-task", "2"], "--prompts-per-task"),
                                           (["--images-per-prompt", "1"], "--images-per-prompt"),
                                           (["--resume"], "--resume")])
def test_long_demo_cli_refuses_options_it_would_ignore(tmp_path, given, named, capsys):
    """``--long`` always runs the full suite for a budget of minutes: an option it cannot honour is refused in
    one line before anything loads (it used to be ignored silently)."""
    from diffalign.cli import main

    assert main(["demo", "--long", "--out", str(tmp_path / "long"), *given]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "long").exists()


def test_demo_cli_reports_bad_algorithm_and_paths(tmp_path, tiny_shapes_models, capsys):
    from diffalign.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--algorithm", "nonsense"])

    def args(out):
        given = ["demo", "--model", str(tiny_shapes_models / "shapes-sd"), "--algorithm", "ddpo", "--epochs", "1",
                 "--prompts-per-task", "1", "--images-per-prompt", "1", "--out", str(out), "--no-progress"]
        return given + [a for item in TINY_DEMO if not item.startswith("awm.") for a in ("--set", item)]

    out = tmp_path / "cli"
    assert main(args(out)) == 0
    printed = capsys.readouterr().out
    assert str(out / "before_after.png") in printed and str(out / "summary.md") in printed
    assert main([*args(tmp_path / "bad"), "--set", "train.nonexistent_key=1"]) == 2
    assert "nonexistent_key" in capsys.readouterr().err


def test_demo_after_differs_from_before(tmp_path, tiny_shapes_models):
    """The after-evaluation samples with the trained LoRA: one epoch at a large learning rate (on a reward that
    varies for an untrained model: the judge gives it 0 everywhere, hence zero advantages) changes the images."""
    from diffalign.demo import run_demo
    from diffalign.media import load_image

    result = run_demo(tmp_path / "demo", algorithm="awm", model=str(tiny_shapes_models / "shapes-flow"), epochs=1,
                      prompts_per_task=1, images_per_prompt=1, overrides=[*TINY_DEMO, "train.learning_rate=0.05", "reward.spec=jpeg_incompressibility", "reward.options={}"],
                      progress=False, log=lambda *a: None)
    before = load_image(result.out / "before" / "grid.png")
    after = load_image(result.out / "after" / "grid.png")
    assert before.shape == after.shape and not torch.equal(before, after)


@pytest.mark.parametrize("algorithm", ["dpo", "kto", "smpo"])
def test_preference_demo_builds_data_trains_and_changes_the_model(tmp_path, tiny_shapes_models, algorithm):
    """``demo --algorithm dpo|kto|smpo``: preference data from the model's own samples (scored by the run's reward;
    the judge gives an untrained tiny model 0 everywhere, so a reward that varies stands in), then training."""
    from diffalign.demo import run_demo
    from diffalign.media import load_image

    tiny = ["eval.steps=2", "prompts.num_eval=4", "eval.batch_size=4", "run.log_with=", "run.progress=false",
            "data.examples_per_epoch=4", "train.batch_size=4", "train.updates_per_epoch=1", "train.learning_rate=0.05",
            "reward.spec=jpeg_incompressibility", "reward.options={}", "smpo.inversion_steps=2"]
    result = run_demo(tmp_path / "demo", algorithm=algorithm, model=str(tiny_shapes_models / "shapes-sd"), epochs=1,
                      prompts_per_task=1, images_per_prompt=1, overrides=tiny, progress=False, log=lambda *a: None,
                      preference_prompts=3)
    summary = json.loads((result.out / "summary.json").read_text())
    assert "jpeg_incompressibility" in summary["preference_data"] and summary["reward"].startswith("jpeg")
    manifest = result.out / "data" / ("labels.jsonl" if algorithm == "kto" else "pairs.jsonl")
    assert manifest.read_text().strip()  # the data the run trained on
    assert "preference data:" in result.paths["summary"].read_text()
    before = load_image(result.out / "before" / "grid.png")
    after = load_image(result.out / "after" / "grid.png")
    assert not torch.equal(before, after)


@pytest.mark.parametrize("algorithm", ["seppo", "dro"])
def test_demo_preference_trainers_build_their_data(tmp_path, tiny_shapes_models, algorithm, monkeypatch):
    from diffalign import demo
    from diffalign.demo import run_demo

    if algorithm in demo.DEMO_DATA_PROMPTS:
        monkeypatch.setitem(demo.DEMO_DATA_PROMPTS, algorithm, 8)

    small = ["data.examples_per_epoch=4", "train.batch_size=4", "seppo.sample_steps=2", "dro.sample_steps=2",
             "dro.buffer_size=4"]
    result = run_demo(tmp_path / "demo", algorithm=algorithm, model=str(tiny_shapes_models / "shapes-sd"), epochs=1,
                      prompts_per_task=1, images_per_prompt=1, overrides=[*TINY_DEMO, *small], progress=False,
                      log=lambda *a: None, preference_prompts=8)
    manifest = result.out / "data" / "experts.jsonl"  # the rendered ground truth: DRO's experts, SePPO's winners
    assert str(manifest) in (result.out / "train" / "config.toml").read_text()
    rows = [json.loads(line) for line in (result.out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r and r["global_step"] == 1 for r in rows)


@pytest.fixture(scope="module")
def tiny_shapes_video(tmp_path_factory):
    """A tiny shapes-video (the real pretraining command, a few steps): the video demo's plumbing, not its rise."""
    from diffalign.shapes import pretrain_video

    out = tmp_path_factory.mktemp("shapes-video")
    assert pretrain_video.main(["--tiny", "--dataset-size", "16", "--batch-size", "4", "--autoencoder-steps", "2", "--steps", "2",
                                "--threads", "1", "--out", str(out)]) == 0
    return out / "shapes-video"


def test_video_demo_runs_ipo_rounds_and_writes_before_after_videos(tmp_path, tiny_shapes_video):
    from diffalign.demo import run_demo
    from diffalign.media import load_video

    # the judge gives a random tiny model 0 everywhere (every pair a tie); JPEG size ranks any two videos
    overrides = ["ipo.critic=jpeg_compressibility", "ipo.prompts_per_round=2", "ipo.videos_per_prompt=2", "ipo.examples_per_epoch=2",
                 "train.updates_per_epoch=1", "ipo.label_batch_size=4",
                 "sampling.steps=2", "sampling.batch_size=4", "train.batch_size=2", "eval.steps=2", "prompts.num_eval=2",
                 "eval.batch_size=4", "run.log_with=", "run.progress=false"]
    result = run_demo(tmp_path / "demo", video=True, model=str(tiny_shapes_video), epochs=4, prompts_per_task=1,
                      images_per_prompt=1, overrides=overrides, progress=False, log=lambda *a: None)
    summary = json.loads((result.out / "summary.json").read_text())
    assert summary["algorithm"] == "ipo" and summary["benchmark"] == "VideoShapesEval" and summary["video"] is True
    # the image demo's fields, with the video suite's five tasks before and after
    assert {"model", "epochs", "train_seconds", "before", "after", "eval_steps", "eval_guidance_scale", "reward"} <= set(summary)
    assert set(summary["before"]["tasks"]) == set(summary["after"]["tasks"]) and len(summary["before"]["tasks"]) == 5
    assert "| **overall** |" in result.paths["summary"].read_text() and "VideoShapesEval" in result.paths["summary"].read_text()
    # the same prompts and seeds before and after, as MP4s that read back with the model's frame count and size
    for side in ("before", "after"):
        files = sorted((result.out / side / "images").rglob("samples/*.mp4"))
        assert len(files) == 5, side  # one prompt per task, one video each
        assert load_video(files[0]).shape == (9, 3, 32, 32)
    grid = load_video(result.paths["before_after_video"])
    assert grid.shape == (9, 3, 3 * (5 * 34 + 2), 3 * (2 * 34 + 2))  # 5 tasks x (before | after), 32 px tiles + padding, x3
    assert result.paths["before_after"].suffix == ".png"
    assert len(list((result.out / "train" / "rounds").glob("round_*/labels.jsonl"))) == 2  # two rounds of two epochs


def test_video_demo_names_the_training_command_while_shapes_video_is_not_shipped(tmp_path):
    from diffalign.demo import run_demo
    from diffalign.errors import MissingPathError
    from diffalign.pipelines import shipped_model_path

    if shipped_model_path("shapes-video") is not None:
        pytest.skip("shapes-video is shipped")
    with pytest.raises(MissingPathError, match="pretrain_video"):
        run_demo(tmp_path / "demo", video=True, progress=False, log=lambda *a: None)
    assert not (tmp_path / "demo").exists()  # refused before anything was written
