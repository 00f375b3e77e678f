"""shapes-reward: the learnt, differentiable ShapesWorld reward and its agreement with the judge."""
from __future__ import annotations

import json

import pytest
import torch

from diffalign import scorers
from diffalign.errors import UserError
from diffalign.shapes import reward as R
from diffalign.shapes import world
from diffalign.shapes.judge import judge_batch

#: measured with the shipped model on these 24 held-out shapes-sd images (72 pairs): 0.65 on all pairs, 0.52 on own captions
SPEARMAN_ALL_PAIRS_BAR = 0.5


@pytest.fixture(scope="module")
def shipped():
    return scorers.load("shapes_reward")


def test_shipped_model_is_small_stock_safetensors_and_differentiable(shipped):
    folder = R.shipped_path()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5e6
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    assert set(state) == set(shipped.model.state_dict())
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "shapes-reward" and config["training"]["held_out"]["pairs"] > 0
    assert shipped.differentiable and not any(p.requires_grad for p in shipped.parameters())


def test_shipped_model_ranks_held_out_generated_images_like_the_judge(shipped):
    """24 shapes-sd images of held-out prompts and seeds (not the training ones), each with its own caption
    and two others, scored by the judge and by shapes_reward: Spearman correlation above the bar."""
    images, prompts = R.generated_images("shapes-sd", 24, prompt_seed=9001, image_seed=9001, low_guidance=None,
                                         batch=24, progress=False)
    pairs = R.score_pairs(images, prompts, seed=9001)
    predicted = shipped(pairs.images[pairs.index].float() / 255, pairs.captions)
    judged = torch.tensor([v.score for v in judge_batch(pairs.images[pairs.index].float() / 255, pairs.captions)])
    torch.testing.assert_close(judged, pairs.targets)  # the targets are the judge's dense scores
    rho = R.spearman(predicted.tolist(), judged.tolist())
    print(f"shapes_reward vs judge on 72 held-out pairs: Spearman {rho:.3f}, own captions "
          f"{R.spearman(predicted[pairs.own].tolist(), judged[pairs.own].tolist()):.3f}")
    assert rho > SPEARMAN_ALL_PAIRS_BAR
    # a caption that matches the image scores higher than one that does not, on average
    assert predicted[pairs.own].mean() > predicted[~pairs.own].mean() + 0.2


def test_gradient_reaches_the_pixels_and_equals_finite_differences(shipped):
    scene = world.scene_for(world.parse_caption("a photo of a circle left of a square"), 3)
    image = world.render_tensor(scene)[None].double().requires_grad_(True)
    model = R.ShapesRewardModel(shipped.model.config)
    model.load_state_dict(shipped.model.state_dict())
    model = model.double().eval()
    caption = [scene.caption]
    score = model.score(image, caption)
    (gradient,) = torch.autograd.grad(score.sum(), image)
    assert gradient.abs().sum() > 0
    direction = torch.randn(image.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        numeric = (model.score(image + eps * direction, caption) - model.score(image - eps * direction, caption)) / (2 * eps)
    torch.testing.assert_close((gradient * direction).sum(), numeric.sum(), rtol=1e-4, atol=1e-8)
    # through the scorer, on images of another size (resized on tensors)
    big = torch.rand(2, 3, 64, 64, requires_grad=True)
    shipped(big, [scene.caption, "a photo of two squares"]).sum().backward()
    assert big.grad is not None and big.grad.abs().sum() > 0


def test_save_and_load_round_trip_and_bad_folders(tmp_path):
    torch.manual_seed(0)
    model = R.ShapesRewardModel().eval()
    model.save_pretrained(tmp_path / "m", {"note": "test"})
    loaded = R.ShapesRewardModel.from_pretrained(tmp_path / "m")
    images = torch.rand(3, 3, 32, 32)
    captions = ["a photo of a circle", "a photo of three squares", "a photo of a green triangle and a blue circle"]
    torch.testing.assert_close(loaded.score(images, captions), model.score(images, captions), rtol=0, atol=0)
    with pytest.raises(UserError, match="model.safetensors is missing"):
        (tmp_path / "m" / "model.safetensors").unlink()
        R.ShapesRewardModel.from_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match="weights .* do not exist"):
        from diffalign.errors import scorer_spec

        scorer_spec("shapes_reward", {"model": str(tmp_path / "nowhere")})


def test_captions_outside_the_grammar_are_one_line_errors(shipped):
    with pytest.raises(world.GrammarError) as caught:
        shipped(torch.rand(1, 3, 32, 32), ["a painting of a dog"])
    assert "\n" not in str(caught.value) and "a painting of a dog" in str(caught.value)


def test_vocabulary_covers_the_grammar_and_tokens_name_their_words():
    model = R.ShapesRewardModel()
    for metadata in world.sample_prompts(200, seed=3):
        ids = model.tokenize([metadata["prompt"]])[0]
        words = [model.config.vocabulary[i] for i in ids.tolist() if i]
        assert " ".join(words) == metadata["prompt"]


def test_training_fits_the_judge_better_than_any_constant(tmp_path):
    config = R.RewardTrainConfig(rendered=96, steps=120, batch_size=32, lr=3e-3)
    images, captions = R.rendered_images(config)
    pairs = R.score_pairs(images, captions, seed=0)
    model, losses = R.train_model(config, {"rendered": pairs, "generated": pairs}, progress=False)
    assert sum(losses[-20:]) < sum(losses[:20])
    predicted = R.predict(model, pairs)
    best_constant = (pairs.targets - pairs.targets.median()).abs().mean()  # the median minimises the mean abs error
    assert (predicted - pairs.targets).abs().mean() < 0.8 * best_constant
    assert predicted[pairs.own].mean() > predicted[~pairs.own].mean() + 0.2


def test_cli_rejects_bad_numbers(capsys):
    assert R.main(["train", "--out", "x", "--steps", "0"]) == 2
    assert "diffalign shapes-reward: --steps must be positive" in capsys.readouterr().err
