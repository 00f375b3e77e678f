"""The trained result in every command: ``--run``, ``--checkpoint``, ``--lora``, ``eval --compare``, ``runs list``,
the model card. Two tiny ShapesWorld runs (LoRA with AWM, full fine-tune with DDPO) train two epochs each; the
reward is JPEG incompressibility at a large learning rate, so two epochs visibly change the images (the judge
scores an untrained tiny model 0 everywhere, which would give zero advantages)."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from diffalign.cli import main
from diffalign.media import load_image, to_uint8
from diffalign.trained import TrainedModelError, load_trained_model

from .test_demo import TINY_DEMO

PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]
STEPS, GUIDANCE = 2, 2.0
FAST = ["train.learning_rate=0.05", "reward.spec=jpeg_incompressibility", "reward.options={}", "run.epochs=2",
        "run.checkpoint_every=1", "eval.at_start=true"]
EVAL = ["--subset", "1", "--images-per-prompt", "1", "--steps", str(STEPS), "--guidance-scale", str(GUIDANCE), "--no-progress"]


def _train(recipe: str, model, run_dir, overrides=()):
    from diffalign.training.trainer import Trainer

    trainer = Trainer(recipe, overrides=[*TINY_DEMO, *FAST, f"model.source={model}", *overrides], run_dir=run_dir)
    trainer.train()
    trainer.close()
    return run_dir


@pytest.fixture(scope="module")
def base_model(tiny_shapes_models):
    return str(tiny_shapes_models / "shapes-sd")


@pytest.fixture(scope="module")
def lora_run(base_model, tmp_path_factory):
    return _train("awm_shapes", base_model, tmp_path_factory.mktemp("runs") / "awm_tiny")


@pytest.fixture(scope="module")
def full_run(base_model, tmp_path_factory):
    overrides = ["model.lora=false"]
    return _train("ddpo_shapes", base_model, tmp_path_factory.mktemp("runs") / "ddpo_full", overrides)


def _sample(adapter, seed: int = 0) -> torch.Tensor:
    return adapter.sample(PROMPTS, steps=STEPS, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(seed)).media


def _stock_pipeline(model):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock_images(pipe, prompts, seeds) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(list(prompts), num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=generators, output_type="pt").images


def _eval_images(folder) -> tuple[list[dict], torch.Tensor]:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return rows, torch.stack([load_image(folder / r["filename"]) for r in rows])


# --------------------------------------------------------------------------------- LoRA runs
def test_sample_eval_and_lora_give_the_trained_images_equal_to_stock_diffusers(lora_run, base_model, tmp_path, capsys):
    pipe = _stock_pipeline(base_model)
    base_stock = _stock_images(pipe, PROMPTS, [0, 0])
    pipe.load_lora_weights(str(lora_run / "final"))

    # diffalign sample --run: the grid holds what stock diffusers with the LoRA gives for the same seed
    grid = tmp_path / "grid.png"
    assert main(["sample", "--run", str(lora_run), *sum((["--prompt", p] for p in PROMPTS), []), "--num-images", "1",
                 "--steps", str(STEPS), "--guidance-scale", str(GUIDANCE), "--seed", "3", "--out", str(grid), "--device", "cpu"]) == 0
    from diffalign.media import save_grid

    one_generator = torch.Generator().manual_seed(3)  # sample draws the whole batch from one generator
    expected = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=one_generator, output_type="pt").images
    want = save_grid(expected, tmp_path / "want.png", nrow=1, scale=max(1, 256 // expected.shape[-1]))
    assert torch.equal(load_image(grid), load_image(want))

    # diffalign eval shapes --run and --model M --lora DIR: the same images, equal to stock diffusers, not the base model's
    assert main(["eval", "shapes", "--run", str(lora_run), "--out", str(tmp_path / "run"), *EVAL]) == 0
    assert main(["eval", "shapes", "--model", base_model, "--lora", str(lora_run / "final"), "--out", str(tmp_path / "lora"), *EVAL]) == 0
    assert main(["eval", "shapes", "--model", base_model, "--out", str(tmp_path / "base"), *EVAL]) == 0
    capsys.readouterr()
    rows, run_images = _eval_images(tmp_path / "run")
    _, lora_images = _eval_images(tmp_path / "lora")
    _, base_images = _eval_images(tmp_path / "base")
    stock = _stock_images(pipe, [r["prompt"] for r in rows], [r["seed"] for r in rows])
    assert torch.equal(run_images, lora_images)
    assert torch.equal(to_uint8(run_images), to_uint8(stock))
    assert not torch.equal(run_images, base_images)
    # and the base model's images are stock diffusers without the LoRA
    assert not torch.equal(to_uint8(stock[:2]), to_uint8(base_stock))


def test_checkpoint_loads_that_epoch_with_the_runs_ema_weights(lora_run, base_model):
    from safetensors.torch import load_file

    final = _sample(load_trained_model(run=lora_run))
    last = load_trained_model(run=lora_run, checkpoint=2)
    assert torch.equal(_sample(last), final)  # final/ holds the EMA weights of the last epoch, as does --checkpoint 2
    first = _sample(load_trained_model(run=lora_run, checkpoint=1))
    base = _sample(load_trained_model(base_model))
    assert not torch.equal(first, final) and not torch.equal(first, base)
    # the loaded tensors are the EMA shadows, not the raw trained weights (the EMA decay makes them differ)
    checkpoint = lora_run / "checkpoints" / "epoch_000002"
    raw = load_file(str(checkpoint / "weights.safetensors"))
    shadows = torch.load(checkpoint / "ema.pt", weights_only=True)["shadow_params"]
    params = dict(last.trainable_denoiser.named_parameters())
    names = [n for n in params if n in raw]
    assert len(names) == len(raw) == len(shadows)
    assert all(torch.equal(params[n], s) for n, s in zip(names, shadows))
    assert any(not torch.equal(params[n], raw[n]) for n in names)


def test_lora_scale_zero_is_the_base_model(lora_run, base_model):
    base = _sample(load_trained_model(base_model))
    assert torch.equal(_sample(load_trained_model(base_model, lora=lora_run / "final", lora_scale=0.0)), base)
    assert torch.equal(_sample(load_trained_model(run=lora_run, checkpoint=2, lora_scale=0.0)), base)
    half = _sample(load_trained_model(base_model, lora=lora_run / "final", lora_scale=0.5))
    assert not torch.equal(half, base) and not torch.equal(half, _sample(load_trained_model(run=lora_run)))


def test_compare_writes_before_and_after_with_the_same_seeds(lora_run, base_model, tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["eval", "shapes", "--run", str(lora_run), "--compare", "--out", str(out), *EVAL]) == 0
    assert "| **overall** |" in capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    assert main(["eval", "shapes", "--model", base_model, "--out", str(tmp_path / "base"), *EVAL]) == 0
    assert main(["eval", "shapes", "--run", str(lora_run), "--out", str(tmp_path / "run"), *EVAL]) == 0
    base = json.loads((tmp_path / "base" / "summary.json").read_text())
    trained = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert report["before"]["tasks"] == base["tasks"] and report["after"]["tasks"] == trained["tasks"]
    assert set(report["tasks"]) == set(base["tasks"]) and len(report["tasks"]) == 6
    for task, values in report["tasks"].items():
        assert values["accuracy"]["delta"] == pytest.approx(trained["tasks"][task]["accuracy"] - base["tasks"][task]["accuracy"])
    # the same seeds: the before images are the base run's, the after images the trained run's
    assert torch.equal(_eval_images(out / "before")[1], _eval_images(tmp_path / "base")[1])
    assert torch.equal(_eval_images(out / "after")[1], _eval_images(tmp_path / "run")[1])
    markdown = (out / "compare.md").read_text()
    assert "accuracy before" in markdown and "accuracy after" in markdown and markdown.count("\n| ") == 8  # 6 tasks + overall + separator
    grid = load_image(out / "before_after.png")
    assert grid.shape[-1] > 2 * grid.shape[-2] / 6  # two panels side by side, six task rows


# --------------------------------------------------------------------------------- full fine-tune
def test_full_fine_tune_run_loads_like_stock_diffusers(full_run, base_model):
    from safetensors.torch import load_file

    assert (full_run / "final" / "denoiser.safetensors").is_file()
    final = _sample(load_trained_model(run=full_run))
    assert not torch.equal(final, _sample(load_trained_model(base_model)))
    assert torch.equal(_sample(load_trained_model(run=full_run, checkpoint=2)), final)
    pipe = _stock_pipeline(base_model)
    result = pipe.unet.load_state_dict(load_file(str(full_run / "final" / "denoiser.safetensors")), strict=False)
    assert not result.unexpected_keys
    stock = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(final, stock)
    with pytest.raises(TrainedModelError, match="full fine-tune"):
        load_trained_model(base_model, lora=full_run / "final")


# --------------------------------------------------------------------------------- bad input
def test_lora_that_does_not_fit_is_a_one_line_error(lora_run, base_model, tiny_shapes_models, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    flow = str(tiny_shapes_models / "shapes-flow")
    cases = {}
    # another architecture: a UNet LoRA onto the SD3-style transformer
    cases["arch"] = (["--model", flow, "--lora", str(lora_run / "final")], [str(lora_run / "final"), "another architecture", "unet"])
    # a missing file
    empty = tmp_path / "empty"
    empty.mkdir()
    cases["missing"] = (["--model", base_model, "--lora", str(empty)], [str(empty), "missing pytorch_lora_weights.safetensors"])
    # a module the model does not have, and a module of another width
    state = load_file(str(lora_run / "final" / "pytorch_lora_weights.safetensors"))
    key = next(k for k in state if k.endswith("to_q.lora_A.weight"))
    wrong_module = tmp_path / "wrong-module"
    wrong_module.mkdir()
    save_file({**state, key.replace("to_q", "to_nothing"): state[key].clone()}, str(wrong_module / "pytorch_lora_weights.safetensors"))
    cases["module"] = (["--model", base_model, "--lora", str(wrong_module)], [str(wrong_module), "to_nothing", "does not have"])
    wrong_width = tmp_path / "wrong-width"
    wrong_width.mkdir()
    save_file({**state, key: torch.zeros(state[key].shape[0], state[key].shape[1] + 3)}, str(wrong_width / "pytorch_lora_weights.safetensors"))
    cases["width"] = (["--model", base_model, "--lora", str(wrong_width)], [str(wrong_width), "input width"])
    for name, (given, expected) in cases.items():
        for command in (["sample", "--steps", "1", "--out", str(tmp_path / "x.png")], ["eval", "shapes", "--out", str(tmp_path / name), *EVAL]):
            assert main([*command, *given]) == 2, name
            # (diffusers' loading bars also write to stderr) exactly one line of ours
            errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("diffalign ")]
            assert len(errors) == 1 and errors[0].startswith(f"diffalign {command[0]}:"), (name, errors)
            err = errors[0]
            for text in expected:
                assert text in err, (name, text, err)
            assert not (tmp_path / "x.png").exists() and not (tmp_path / name / "results.jsonl").exists()
    assert main(["sample", "--checkpoint", "1", "--out", str(tmp_path / "x.png")]) == 2  # no --run: refused before loading
    assert "--checkpoint needs --run" in capsys.readouterr().err
    with pytest.raises(TrainedModelError, match="LoRA folder not found"):
        load_trained_model(base_model, lora=tmp_path / "nowhere")
    with pytest.raises(TrainedModelError, match="saved epochs: 1, 2"):
        load_trained_model(run=lora_run, checkpoint=5)
    with pytest.raises(TrainedModelError, match="not both"):
        load_trained_model(base_model, lora=lora_run / "final", run=lora_run)
    with pytest.raises(TrainedModelError, match="a run folder"):
        load_trained_model(base_model, lora=lora_run)


def test_trainables_that_are_not_the_denoiser_are_named_or_go_to_their_loader(lora_run, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from diffalign import trained
    from diffalign.registry import Registry

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    weights = run / "checkpoints" / "epoch_000002" / "weights.safetensors"
    # "noise" is FIND's registered noise law; an unregistered prefix is named in the error
    save_file({**load_file(str(weights)), "extra/mu": torch.arange(4.0)}, str(weights))
    with pytest.raises(TrainedModelError, match=r"not the denoiser \(extra\)"):
        load_trained_model(run=run, checkpoint=2)
    # the hook: a registered loader receives its tensors by name, the denoiser still gets its LoRA
    received = {}
    loaders = Registry("non-denoiser trainable")
    loaders.register("extra", lambda adapter, tensors: received.update(tensors))
    monkeypatch.setattr(trained, "NON_DENOISER_LOADERS", loaders)
    adapter = load_trained_model(run=run, checkpoint=2)
    assert list(received) == ["mu"] and torch.equal(received["mu"], torch.arange(4.0))
    assert torch.equal(_sample(adapter), _sample(load_trained_model(run=lora_run)))
    shutil.rmtree(run / "final")
    with pytest.raises(TrainedModelError, match=r"missing final/pytorch_lora_weights.safetensors .*saved epochs: 1, 2"):
        load_trained_model(run=run)


# --------------------------------------------------------------------------------- runs list, card
def test_runs_list_shows_the_runs(lora_run, full_run, tmp_path, capsys):
    folder = tmp_path / "runs"
    shutil.copytree(lora_run, folder / lora_run.name)
    unfinished = folder / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.toml").write_text('[run]\nalgorithm = "ddpo"\nepochs = 5\n')
    (folder / "not-a-run").mkdir()
    assert main(["runs", "list", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split()[:2] == ["run", "algorithm"]
    rows = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    held = [r["eval/reward_mean"] for r in rows if "eval/reward_mean" in r][-1]
    trained = next(line for line in lines if line.startswith(lora_run.name))
    assert re.search(rf"awm .* 2/2 +{held:.4f} \(epoch 2\) +yes \(epoch 2\) +yes$", trained), trained
    assert re.search(r"^unfinished +ddpo .* 0/5 +- +no +no$", next(line for line in lines if line.startswith("unfinished")))
    assert main(["runs", "list", str(tmp_path / "nowhere")]) == 2
    assert "diffalign runs:" in capsys.readouterr().err


def test_model_card_names_the_recipe_metrics_and_loads_with_its_own_code(lora_run, full_run, base_model):
    card = (lora_run / "final" / "README.md").read_text()
    assert f"`{base_model}`" in card and "awm" in card and "shipped recipe `awm_shapes`" in card
    from diffalign.training.trainer import recipe_path

    header = recipe_path("awm_shapes").read_text().splitlines()[0].lstrip("# ")
    assert f"> {header}" in card and "`train.learning_rate = 0.05`" in card
    rows = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    for r in (r for r in rows if "eval/reward_mean" in r):
        assert f"| {r['epoch']} | {r['eval/reward_mean']:.4f} |" in card
    code = card.split("```python\n")[1].split("```")[0]
    assert len(code.strip().splitlines()) == 3
    scope: dict = {}
    exec(code, scope)  # the card's own lines load the LoRA into a stock pipeline
    pipe = scope["pipe"]
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(images, _sample(load_trained_model(run=lora_run)))
    full_card = (full_run / "final" / "README.md").read_text()
    assert "full fine-tune" in full_card and "denoiser.safetensors" in full_card and "shipped recipe `ddpo_shapes`" in full_card


def test_prefs_build_samples_the_trained_model(lora_run, base_model, tmp_path, capsys):
    """``prefs build --run``: the preference data are the trained model's samples, not the base model's."""
    def build(out, *weights):
        assert main(["prefs", "build", *weights, "--prompts", "shapes", "--num-prompts", "2", "--images-per-prompt", "2",
                     "--steps", str(STEPS), "--guidance-scale", str(GUIDANCE), "--scorer", "jpeg_incompressibility",
                     "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
        return torch.stack([load_image(p) for p in sorted((out / "images").glob("*.png"))])

    trained = build(tmp_path / "trained", "--run", str(lora_run))
    by_lora = build(tmp_path / "lora", "--model", base_model, "--lora", str(lora_run / "final"))
    base = build(tmp_path / "base", "--model", base_model)
    assert torch.equal(trained, by_lora) and not torch.equal(trained, base)
    assert main(["prefs", "build", "--model", base_model, "--lora", str(tmp_path / "missing"), "--prompts", "shapes",
                 "--num-prompts", "2", "--scorer", "jpeg_incompressibility", "--out", str(tmp_path / "bad"), "--device", "cpu"]) == 2
    assert "missing" in capsys.readouterr().err
