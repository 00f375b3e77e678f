"""ShapesEval end to end: oracle -> 1.0, blank -> 0.0, documented output format, seeds, resume, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffalign.eval import BenchmarkError, GroundTruthSampler, build_prompt_suite, run_shapes_eval
from diffalign.eval.benchmark import load_prompt_suite
from diffalign.eval.shapes_eval import shapes_eval_benchmark, suite_path
from diffalign.rollout import Rollout
from diffalign.shapes import world

ROW_FIELDS = {"filename", "tag", "prompt", "correct", "score", "reason", "metadata", "details", "prompt_index", "sample_index", "seed"}



class BlankSampler:
    """Grey canvases, returned inside a Rollout like a real adapter's."""

    def __init__(self):
        self.calls: list[dict] = []

    def sample(self, prompts, steps=20, guidance_scale=1.0, generator=None, **kwargs):
        self.calls.append({"prompts": list(prompts), "steps": steps, "guidance_scale": guidance_scale, "generator": generator, **kwargs})
        media = torch.full((len(prompts), 3, world.IMAGE_SIZE, world.IMAGE_SIZE), 128 / 255)
        return Rollout(prompts=list(prompts), latents=torch.zeros(len(prompts), 2, 1), timesteps=torch.zeros(1), conditioning={}, media=media)


class RedCircleSampler:
    """Always draws one red circle, whatever the prompt."""

    def sample(self, prompts, steps=20, guidance_scale=1.0, generator=None, **kwargs):
        scene = world.scene_for(world.make_metadata("colors", ["circle"], ["red"]), 0)
        return torch.stack([world.render_tensor(scene) for _ in prompts])


def test_shipped_suite_is_reproducible_from_its_generator():
    rows = [item.metadata for item in load_prompt_suite(suite_path())]
    assert rows == build_prompt_suite()
    counts = {task: sum(r["tag"] == task for r in rows) for task in world.TASKS}
    # small prompt spaces are listed whole: 3 shapes, 6 ordered pairs, 3 shapes x 3 counts
    assert counts == {"single_object": 3, "two_object": 6, "counting": 9, "colors": 24, "position": 24, "color_attr": 24}
    assert len({r["prompt"] for r in rows}) == len(rows)
    for row in rows:
        assert world.parse_caption(row["prompt"]) == row


def test_ground_truth_sampler_scores_one_and_writes_the_documented_files(tmp_path):
    summary = run_shapes_eval(GroundTruthSampler(), tmp_path, images_per_prompt=2, max_prompts_per_task=3, progress=False, model_name="oracle")
    assert summary["overall"] == 1.0 and summary["overall_score"] == 1.0
    assert list(summary["tasks"]) == list(world.TASKS)
    assert all(v["accuracy"] == 1.0 and v["prompts"] == 3 and v["images"] == 6 for v in summary["tasks"].values())

    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 3 * 2 == summary["images"]
    for row in rows:
        assert set(row) == ROW_FIELDS
        assert (tmp_path / row["filename"]).is_file()
        assert row["metadata"]["prompt"] == row["prompt"] and row["correct"] is True and row["reason"] == ""
        assert {"detections", "classes", "credits"} <= set(row["details"])
    # GenEval's folder layout: <index>/metadata.jsonl holds that prompt's metadata line
    first = rows[0]
    folder = tmp_path / Path(first["filename"]).parent.parent
    assert json.loads((folder / "metadata.jsonl").read_text()) == first["metadata"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["overall"] == 1.0 and saved["benchmark"] == "ShapesEval" and saved["version"] == "v1"
    assert saved["protocol"]["images_per_prompt"] == 2 and saved["max_prompts_per_task"] == 3
    table = (tmp_path / "summary.md").read_text()
    assert "| counting | 1.000 |" in table and "| **overall** | **1.000** |" in table
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_blank_images_score_zero_on_every_object_task(tmp_path):
    sampler = BlankSampler()
    summary = run_shapes_eval(sampler, tmp_path, images_per_prompt=2, max_prompts_per_task=4, steps=7, guidance_scale=3.0, progress=False, batch_size=5)
    assert summary["overall"] == 0.0 and summary["overall_score"] == 0.0
    assert all(v["accuracy"] == 0.0 for v in summary["tasks"].values())
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(r["reason"].startswith("expected ") for r in rows)
    # the protocol reached the sampler: settings, batch size, one seeded generator per image
    assert {c["steps"] for c in sampler.calls} == {7} and {c["guidance_scale"] for c in sampler.calls} == {3.0}
    assert max(len(c["prompts"]) for c in sampler.calls) == 5
    seeds = [g.initial_seed() for c in sampler.calls for g in c["generator"]]
    assert seeds == [r["seed"] for r in rows] and len(set(seeds)) == len(seeds)


def test_overall_is_the_unweighted_mean_of_task_accuracies(tmp_path):
    summary = run_shapes_eval(RedCircleSampler(), tmp_path, images_per_prompt=1, progress=False, save_images=False)
    suite = build_prompt_suite()
    expected = {
        "single_object": sum(m["include"][0]["class"] == "circle" for m in suite if m["tag"] == "single_object") / 3,
        "colors": sum(m["prompt"] == "a photo of a red circle" for m in suite if m["tag"] == "colors") / 24,
    }
    tasks = summary["tasks"]
    assert tasks["single_object"]["accuracy"] == pytest.approx(expected["single_object"]) == pytest.approx(1 / 3)
    assert tasks["colors"]["accuracy"] == pytest.approx(expected["colors"])
    for task in ("two_object", "counting", "position", "color_attr"):
        assert tasks[task]["accuracy"] == 0.0
    assert summary["overall"] == pytest.approx(sum(v["accuracy"] for v in tasks.values()) / 6)
    assert 0 < tasks["two_object"]["score"] < 1  # one of the two objects is often there: partial credit
    assert not (tmp_path / "images").exists()


def test_subset_runs_reproduce_the_full_run_images(tmp_path):
    full = tmp_path / "full"
    subset = tmp_path / "subset"
    run_shapes_eval(GroundTruthSampler(), full, images_per_prompt=2, max_prompts_per_task=2, progress=False)
    run_shapes_eval(GroundTruthSampler(), subset, images_per_prompt=2, max_prompts_per_task=1, progress=False)
    subset_rows = [json.loads(line) for line in (subset / "results.jsonl").read_text().splitlines()]
    for row in subset_rows:
        assert (full / row["filename"]).read_bytes() == (subset / row["filename"]).read_bytes()


def test_interrupted_run_resumes_without_losing_work(tmp_path):
    class FailsAfterTwoCalls(GroundTruthSampler):
        calls = 0

        def sample(self, prompts, **kwargs):
            type(self).calls += 1
            if type(self).calls > 2:
                raise RuntimeError("out of memory")
            return super().sample(prompts, **kwargs)

    with pytest.raises(RuntimeError, match="out of memory"):
        run_shapes_eval(FailsAfterTwoCalls(), tmp_path, images_per_prompt=2, max_prompts_per_task=2, batch_size=4, progress=False)
    kept = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(kept) == 8
    with pytest.raises(BenchmarkError, match="resume"):
        run_shapes_eval(GroundTruthSampler(), tmp_path, images_per_prompt=2, max_prompts_per_task=2, progress=False)
    counter = BlankSampler()
    summary = run_shapes_eval(counter, tmp_path, images_per_prompt=2, max_prompts_per_task=2, batch_size=4, progress=False, resume=True)
    assert sum(len(c["prompts"]) for c in counter.calls) == 24 - 8  # only the missing images were sampled
    assert summary["images"] == 24
    assert (tmp_path / "results.jsonl").read_text().splitlines()[:8] == kept


def test_bad_sampler_output_and_bad_suite_are_named(tmp_path):
    class WrongCount:
        def sample(self, prompts, **kwargs):
            return torch.zeros(1, 3, 32, 32)

    with pytest.raises(BenchmarkError, match="returned 1 images for 16 prompts"):
        run_shapes_eval(WrongCount(), tmp_path / "a", images_per_prompt=4, max_prompts_per_task=1, progress=False)
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"tag": "single_object", "prompt": "a photo of a cat", "include": []}\n')
    with pytest.raises(world.GrammarError, match="a photo of a cat"):
        shapes_eval_benchmark(suite)


def test_cli_help_and_oracle_run(tmp_path, capsys):
    from diffalign.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "shapes", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--model" in help_text and "--max-prompts-per-task" in help_text and "--images-per-prompt" in help_text
    code = main(["eval", "shapes", "--model", "oracle", "--out", str(tmp_path / "run"), "--subset", "1", "--images-per-prompt", "1", "--no-progress"])
    assert code == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["overall"] == 1.0
    assert "ShapesEval v1" in capsys.readouterr().out
    assert main(["eval", "shapes", "--model", "oracle", "--out", str(tmp_path / "run"), "--subset", "1", "--no-progress"]) == 2


@pytest.mark.slow
def test_a_real_adapter_runs_through_the_harness(tmp_path, tiny_model):
    """The sampling protocol drives a diffusers pipeline adapter (tiny random SD 1.5: it draws noise)."""
    from diffalign.pipelines import load

    adapter = load(str(tiny_model("sd15")))
    summary = run_shapes_eval(adapter, tmp_path, images_per_prompt=1, max_prompts_per_task=1, steps=2, progress=False, batch_size=6)
    assert summary["images"] == 6
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
