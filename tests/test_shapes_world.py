"""ShapesWorld: grammar round trips, determinism by seed, unambiguous scenes, renderer geometry."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from diffalign.shapes import world
from diffalign.shapes.world import (
    COLORS,
    IMAGE_SIZE,
    RELATIONS,
    SHAPES,
    TASKS,
    GrammarError,
    caption,
    generate_dataset,
    iter_dataset,
    make_metadata,
    parse_caption,
    relations,
    render,
    sample_prompts,
    sample_scene,
)


def test_vocabulary_and_constants():
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert len(COLORS) >= 6 and all(len(rgb) == 3 for rgb in COLORS.values())
    assert RELATIONS == ("left of", "right of", "above", "below")
    assert TASKS == ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    assert 32 <= IMAGE_SIZE <= 64


@pytest.mark.parametrize(
    "metadata, text",
    [
        (make_metadata("single_object", ["circle"]), "a photo of a circle"),
        (make_metadata("two_object", ["square", "triangle"]), "a photo of a square and a triangle"),
        (make_metadata("counting", ["circle"], count=3), "a photo of three circles"),
        (make_metadata("colors", ["square"], ["orange"]), "a photo of an orange square"),
        (make_metadata("position", ["circle", "square"], relation="left of"), "a photo of a circle left of a square"),
        (make_metadata("color_attr", ["circle", "triangle"], ["red", "blue"]), "a photo of a red circle and a blue triangle"),
    ],
)
def test_geneval_templates_and_metadata(metadata, text):
    assert metadata["prompt"] == text
    assert caption(metadata) == text
    assert parse_caption(text) == metadata
    assert parse_caption("  A photo of " + text[len("a photo of "):].upper() + ". ") == metadata


def test_metadata_layout_matches_geneval():
    counting = make_metadata("counting", ["triangle"], count=4)
    assert counting["include"] == [{"class": "triangle", "count": 4}]
    assert counting["exclude"] == [{"class": "triangle", "count": 5}]
    position = make_metadata("position", ["circle", "square"], relation="above")
    # the reference object is group 0, the positioned one points at it
    assert position["include"] == [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["above", 0]}]


def test_every_sampled_caption_round_trips_and_is_short():
    from diffalign.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    prompts = sample_prompts(600, seed=1)
    assert {p["tag"] for p in prompts} == set(TASKS)
    lengths = []
    for metadata in prompts:
        assert parse_caption(metadata["prompt"]) == metadata
        ids = tokenizer(metadata["prompt"]).input_ids
        assert tokenizer.unk_token_id not in ids[1:-1]
        lengths.append(len(ids))
    assert max(lengths) <= 16  # well inside CLIP's 77


@pytest.mark.parametrize(
    "text",
    ["a photo of a dog", "a photo of five circles", "an photo of a circle", "a photo of an square", "a photo of a circle near a square", "", "a photo of a pink circle"],
)
def test_text_outside_the_grammar_is_rejected_clearly(text):
    with pytest.raises(GrammarError, match="outside the ShapesWorld grammar"):
        parse_caption(text)


def test_bad_vocabulary_is_named():
    with pytest.raises(GrammarError, match="unknown shape 'hexagon'"):
        make_metadata("single_object", ["hexagon"])
    with pytest.raises(GrammarError, match="unknown task"):
        sample_scene(random.Random(0), "counting_objects")


def test_dataset_is_deterministic_by_seed():
    first = generate_dataset(24, seed=3)
    second = generate_dataset(24, seed=3)
    other = generate_dataset(24, seed=4)
    assert [s.caption for s in first] == [s.caption for s in second]
    assert all(torch.equal(a.image, b.image) for a, b in zip(first, second))
    assert [s.caption for s in first] != [s.caption for s in other]
    assert not all(torch.equal(a.image, b.image) for a, b in zip(first, other))
    # streaming and random access give the same items
    streamed = list(iter_dataset(4, seed=3, start=10))
    assert [s.caption for s in streamed] == [s.caption for s in generate_dataset(14, seed=3)[10:]]
    item = world.ShapesDataset(24, seed=3)[7]
    assert torch.equal(item["image"], first[7].image) and item["caption"] == first[7].caption
    sample = first[0]
    assert sample.image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and sample.image.dtype == torch.float32
    assert 0 <= float(sample.image.min()) and float(sample.image.max()) <= 1
    batch = world.collate_samples(first[:5])
    assert batch["image"].shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE) and len(batch["metadata"]) == 5


def test_sample_scene_accepts_random_and_numpy_generators():
    a = sample_scene(np.random.default_rng(7), "color_attr")
    b = sample_scene(np.random.default_rng(7), "color_attr")
    assert a.objects == b.objects and a.metadata == b.metadata
    c = sample_scene(random.Random(7), "position")
    d = sample_scene(random.Random(7), "position")
    assert c.objects == d.objects


def test_task_mix_weights():
    samples = generate_dataset(40, seed=0, tasks={"counting": 1.0, "position": 0.0})
    assert {s.metadata["tag"] for s in samples} == {"counting"}
    with pytest.raises(GrammarError, match="unknown task"):
        generate_dataset(2, tasks=["counting", "spelling"])


def test_scenes_are_unambiguous_by_construction():
    rng = random.Random(0)
    for task in TASKS:
        for _ in range(150):
            scene = sample_scene(rng, task)
            objects = scene.objects
            assert 1 <= len(objects) <= 4
            for obj in objects:
                x0, y0, x1, y1 = obj.box
                assert 0 < x0 and 0 < y0 and x1 < 1 and y1 < 1
            for i, a in enumerate(objects):
                for b in objects[i + 1:]:
                    assert world._box_gap(a, b) >= world._GAP  # no overlap, a visible gap
            wanted = {}
            for clause in scene.metadata["include"]:
                wanted[clause["class"]] = wanted.get(clause["class"], 0) + clause["count"]
            assert sorted(o.shape for o in objects) == sorted(s for s, n in wanted.items() for _ in range(n))
            for clause in scene.metadata["include"]:
                if "color" in clause:
                    assert any(o.shape == clause["class"] and o.color == clause["color"] for o in objects)
            if task == "position":
                relation = scene.metadata["include"][1]["position"][0]
                # exactly the stated relation holds (under GenEval's rule), none of the others
                assert relations(objects[0].box, objects[1].box) == {relation}


def test_relations_follow_geneval_rule():
    left, right = (0.1, 0.4, 0.3, 0.6), (0.6, 0.4, 0.8, 0.6)
    assert relations(left, right) == {"left of"} and relations(right, left) == {"right of"}
    top, bottom = (0.4, 0.1, 0.6, 0.3), (0.4, 0.6, 0.6, 0.8)
    assert relations(top, bottom) == {"above"} and relations(bottom, top) == {"below"}
    diagonal = relations((0.0, 0.0, 0.2, 0.2), (0.6, 0.6, 0.8, 0.8))
    assert diagonal == {"left of", "above"}  # both components 0.707 > 0.5
    # boxes that nearly coincide: the 0.1 * (size sum) shrink leaves no relation
    assert relations((0.40, 0.4, 0.6, 0.6), (0.43, 0.4, 0.63, 0.6)) == set()


def test_render_sizes_background_and_geometry():
    scene = world.scene_for(make_metadata("colors", ["square"], ["red"]), random.Random(0))
    for size in (32, 64):
        image = render(scene, size)
        assert image.mode == "RGB" and image.size == (size, size)
        assert image.getpixel((0, 0)) == world.BACKGROUND
    assert render(scene, 32, background=(255, 255, 255)).getpixel((0, 0)) == (255, 255, 255)
    obj = scene.objects[0]
    centre = render(scene, 64).getpixel((int(obj.center[0] * 64), int(obj.center[1] * 64)))
    assert centre == COLORS["red"]


@pytest.mark.parametrize("shape", SHAPES)
def test_judge_geometry_matches_renderer(shape):
    """The signed-distance geometry the judge fits is the one the PIL renderer draws."""
    size = 64
    scene = world.Scene([world.ShapeObject(shape, "white", (0.47, 0.53), 0.4)], make_metadata("single_object", [shape]))
    drawn = torch.from_numpy(np.asarray(render(scene, size), dtype=np.float32) / 255.0)[..., 0]
    coverage_render = (drawn - 128 / 255) / ((245 - 128) / 255)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    coverage_sdf = world.shape_coverage(shape, grid[None, :], grid[:, None], torch.tensor(0.47 * size), torch.tensor(0.53 * size), torch.tensor(0.4 * size))
    iou = torch.minimum(coverage_render, coverage_sdf).sum() / torch.maximum(coverage_render, coverage_sdf).sum()
    assert iou > 0.95
    mass = coverage_render.sum() / (0.4 * size) ** 2
    assert mass == pytest.approx(world.SHAPE_FILL[shape], rel=0.05)
