"""ShapesWorld: a synthetic world of coloured shapes with GenEval-style captions.

Every scene is described *completely* by its caption, so a model trained on it can learn the
grammar, and the rule-based judge in :mod:`diffalign.shapes.judge` can check any image against any
caption exactly.

* Shapes (:data:`SHAPES`) are drawn upright and fill a square box of side ``size``: a disc, an
  axis-aligned square, an upright isosceles triangle (apex at the top centre).
* Colours (:data:`COLORS`) are saturated and well apart in RGB, all far from the grey background.
* Captions follow GenEval's six templates (``a photo of two red circles`` is *not* one: counting
  prompts carry no colour, as in GenEval):

  ==============  ==========================================================
  single_object   a photo of a {A}
  two_object      a photo of a {A} and a {B}                      (A ≠ B)
  counting        a photo of {two|three|four} {A}s
  colors          a photo of a {c} {A}
  position        a photo of a {A} {rel} a {B}                   (A ≠ B)
  color_attr      a photo of a {c1} {A} and a {c2} {B}   (A ≠ B, c1 ≠ c2)
  ==============  ==========================================================

  with "an" before a vowel. The metadata dict is GenEval's
  (``{"tag", "include": [{"class", "count", "color"?, "position"?: [rel, group]}], "exclude", "prompt"}``).
* Scenes are unambiguous by construction: objects never overlap and keep a gap, counts are exact,
  and a position scene satisfies its relation (under GenEval's rule, :func:`relations`) with a
  margin, while the perpendicular relations and the opposite one do not hold.

Coordinates are normalised (x right, y down, both in [0, 1]), so one scene renders at any size.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffalign.errors import UserError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 40),
    "green": (40, 175, 60),
    "blue": (40, 80, 225),
    "purple": (140, 40, 200),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
BACKGROUND: tuple[int, int, int] = (128, 128, 128)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
IMAGE_SIZE = 32
NUMBERS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
COUNTS: tuple[int, ...] = tuple(NUMBERS)
#: GenEval's ``position_threshold``: centre offsets shrink by this fraction of the two box sizes.
POSITION_THRESHOLD = 0.1

# Scene geometry, in fractions of the image side. Sizes give objects of >= 6 px at 32 px.
_SIZE_RANGE_FEW = (0.24, 0.34)  # scenes of 1-2 objects
_SIZE_RANGE_MANY = (0.20, 0.26)  # scenes of 3-4 objects
_BORDER = 0.06  # empty margin at the image border
_GAP = 0.07  # minimum empty gap between two object boxes
_RELATION_MAIN = 0.75  # position scenes: |component| of the asked relation >= this ...
_RELATION_OTHER = 0.3  # ... and the perpendicular component <= this
_SUPERSAMPLE = 4


class GrammarError(UserError):
    """A caption outside the ShapesWorld grammar, or metadata naming an unknown shape/colour/relation."""


@dataclass(frozen=True)
class ShapeObject:
    """One object: ``center`` is normalised ``(x, y)`` (y down), ``size`` the side of its square box."""

    shape: str
    color: str
    center: tuple[float, float]
    size: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Normalised ``(x0, y0, x1, y1)``."""
        half = self.size / 2
        return (self.center[0] - half, self.center[1] - half, self.center[0] + half, self.center[1] + half)


@dataclass
class Scene:
    """Objects plus the GenEval metadata their caption states (``metadata["prompt"]`` is the caption)."""

    objects: list[ShapeObject]
    metadata: dict[str, Any]

    @property
    def tag(self) -> str:
        return self.metadata["tag"]

    @property
    def caption(self) -> str:
        return self.metadata["prompt"]


@dataclass
class Sample:
    """One training example: ``image`` is ``3×H×W`` float in [0, 1]."""

    image: torch.Tensor
    caption: str
    metadata: dict[str, Any]
    scene: Scene | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------- grammar
def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")  # GenEval's rule


def _noun_phrase(shape: str, color: str | None = None) -> str:
    words = f"{color} {shape}" if color else shape
    return f"{article(words)} {words}"


def _check_vocab(shape: str | None = None, color: str | None = None, relation: str | None = None) -> None:
    if shape is not None and shape not in SHAPES:
        raise GrammarError(f"unknown shape {shape!r}; ShapesWorld shapes: {', '.join(SHAPES)}")
    if color is not None and color not in COLORS:
        raise GrammarError(f"unknown colour {color!r}; ShapesWorld colours: {', '.join(COLORS)}")
    if relation is not None and relation not in RELATIONS:
        raise GrammarError(f"unknown relation {relation!r}; ShapesWorld relations: {', '.join(RELATIONS)}")


def make_metadata(tag: str, shapes: Sequence[str], colors: Sequence[str | None] = (), count: int = 1, relation: str | None = None) -> dict[str, Any]:
    """The GenEval metadata (with its prompt) for one task, from the words that fill the template.

    ``shapes`` and ``colors`` are in caption order; for ``position`` the caption reads
    ``a {shapes[0]} {relation} a {shapes[1]}``, and, as in GenEval, the reference object
    (``shapes[1]``) is include group 0 and the positioned one carries ``position: [relation, 0]``.
    """
    colors = list(colors) + [None] * (len(shapes) - len(colors))
    for s, c in zip(shapes, colors):
        _check_vocab(shape=s, color=c)
    expected = {"single_object": 1, "two_object": 2, "counting": 1, "colors": 1, "position": 2, "color_attr": 2}
    if tag not in expected:
        raise GrammarError(f"unknown task {tag!r}; ShapesWorld tasks: {', '.join(TASKS)}")
    if len(shapes) != expected[tag]:
        raise GrammarError(f"task {tag!r} names {expected[tag]} shape(s), got {list(shapes)}")
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]] = []
    if tag == "single_object":
        include = [{"class": shapes[0], "count": 1}]
        prompt = f"a photo of {_noun_phrase(shapes[0])}"
    elif tag == "two_object":
        include = [{"class": shapes[0], "count": 1}, {"class": shapes[1], "count": 1}]
        prompt = f"a photo of {_noun_phrase(shapes[0])} and {_noun_phrase(shapes[1])}"
    elif tag == "counting":
        if count not in NUMBERS:
            raise GrammarError(f"counting prompts take a count in {list(NUMBERS)}, got {count!r}")
        include = [{"class": shapes[0], "count": count}]
        exclude = [{"class": shapes[0], "count": count + 1}]
        prompt = f"a photo of {NUMBERS[count]} {plural(shapes[0])}"
    elif tag == "colors":
        if colors[0] is None:
            raise GrammarError("a colors prompt needs a colour")
        include = [{"class": shapes[0], "count": 1, "color": colors[0]}]
        prompt = f"a photo of {_noun_phrase(shapes[0], colors[0])}"
    elif tag == "position":
        _check_vocab(relation=relation)
        if relation is None:
            raise GrammarError("a position prompt needs a relation")
        include = [{"class": shapes[1], "count": 1}, {"class": shapes[0], "count": 1, "position": [relation, 0]}]
        prompt = f"a photo of {_noun_phrase(shapes[0])} {relation} {_noun_phrase(shapes[1])}"
    else:  # color_attr
        if colors[0] is None or colors[1] is None:
            raise GrammarError("a color_attr prompt needs two colours")
        include = [{"class": shapes[0], "count": 1, "color": colors[0]}, {"class": shapes[1], "count": 1, "color": colors[1]}]
        prompt = f"a photo of {_noun_phrase(shapes[0], colors[0])} and {_noun_phrase(shapes[1], colors[1])}"
    return {"tag": tag, "include": include, "exclude": exclude, "prompt": prompt}


def _grammar_patterns() -> list[tuple[str, re.Pattern[str]]]:
    shape = "|".join(SHAPES)
    color = "|".join(COLORS)
    rel = "|".join(RELATIONS)
    number = "|".join(NUMBERS.values())
    plural_shape = "|".join(plural(s) for s in SHAPES)
    art = r"(?:a|an)"
    return [
        ("counting", re.compile(rf"a photo of (?P<n>{number}) (?P<a>{plural_shape})")),
        ("color_attr", re.compile(rf"a photo of {art} (?P<c1>{color}) (?P<a>{shape}) and {art} (?P<c2>{color}) (?P<b>{shape})")),
        ("two_object", re.compile(rf"a photo of {art} (?P<a>{shape}) and {art} (?P<b>{shape})")),
        ("position", re.compile(rf"a photo of {art} (?P<a>{shape}) (?P<rel>{rel}) {art} (?P<b>{shape})")),
        ("colors", re.compile(rf"a photo of {art} (?P<c1>{color}) (?P<a>{shape})")),
        ("single_object", re.compile(rf"a photo of {art} (?P<a>{shape})")),
    ]


def parse_caption(text: str) -> dict[str, Any]:
    """Caption -> GenEval metadata; the inverse of :func:`caption` (whitespace and case are normalised).

    Raises :class:`GrammarError` naming the text when it is outside the ShapesWorld grammar.
    """
    if not isinstance(text, str):
        raise GrammarError(f"a caption must be a string, got {type(text).__name__}")
    normalised = " ".join(text.lower().strip().rstrip(".").split())
    for tag, pattern in _grammar_patterns():
        match = pattern.fullmatch(normalised)
        if match is None:
            continue
        groups = match.groupdict()
        if tag == "counting":
            count = {v: k for k, v in NUMBERS.items()}[groups["n"]]
            shape = next(s for s in SHAPES if plural(s) == groups["a"])
            metadata = make_metadata(tag, [shape], count=count)
        else:
            shapes = [groups[k] for k in ("a", "b") if groups.get(k)]
            colors = [groups[k] for k in ("c1", "c2") if groups.get(k)]
            metadata = make_metadata(tag, shapes, colors, relation=groups.get("rel"))
        if metadata["prompt"] != normalised:  # wrong article ("an square") is not in the grammar
            break
        return metadata
    raise GrammarError(
        f"caption {text!r} is outside the ShapesWorld grammar: expected one of GenEval's templates over "
        f"shapes {list(SHAPES)}, colours {list(COLORS)}, relations {list(RELATIONS)}, counts {list(NUMBERS.values())}, "
        "e.g. 'a photo of two circles' or 'a photo of a red square left of a triangle'"
    )


def caption(scene_or_metadata: Scene | Mapping[str, Any]) -> str:
    """The caption of a scene or a metadata dict (rebuilt from the clauses, so it is always in the grammar)."""
    metadata = scene_or_metadata.metadata if isinstance(scene_or_metadata, Scene) else scene_or_metadata
    tag = metadata.get("tag")
    include = metadata.get("include") or []
    try:
        if tag == "counting":
            return make_metadata(tag, [include[0]["class"]], count=include[0]["count"])["prompt"]
        if tag == "position":
            rel = include[1]["position"][0]
            return make_metadata(tag, [include[1]["class"], include[0]["class"]], relation=rel)["prompt"]
        return make_metadata(tag, [c["class"] for c in include], [c.get("color") for c in include])["prompt"]
    except (IndexError, KeyError, TypeError) as err:
        raise GrammarError(f"metadata {dict(metadata)!r} does not describe a ShapesWorld {tag!r} prompt ({err})") from err


# -------------------------------------------------------------------------------------- geometry
def relation_components(box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD) -> tuple[float, float] | None:
    """GenEval's relative position of box A w.r.t. box B (:func:`diffalign.eval.geneval.rules.relation_components`)."""
    # imported at call time: diffalign.eval imports ShapesWorld
    from diffalign.eval.geneval.rules import relation_components as geneval_relation_components

    return geneval_relation_components(box_a, box_b, threshold)


def relations(box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD) -> set[str]:
    """The set of :data:`RELATIONS` that hold for A relative to B (GenEval's rule, y grows downward)."""
    from diffalign.eval.geneval.rules import relative_position

    return relative_position(box_a, box_b, threshold)


def _box_gap(a: ShapeObject, b: ShapeObject) -> float:
    """Empty space between two boxes (max over axes; negative when they overlap)."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)


def _relation_clear(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    components = relation_components(a.box, b.box)
    if components is None:
        return False
    dx, dy = components
    main, other = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return main >= _RELATION_MAIN and abs(other) <= _RELATION_OTHER


# --------------------------------------------------------------------------------------- sampling
def _as_random(rng: random.Random | np.random.Generator | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(0, 2**63 - 1)))
    if rng is None or isinstance(rng, (int, np.integer)):
        return random.Random(rng)
    raise TypeError(f"rng must be a random.Random, a numpy Generator or an int seed, got {type(rng).__name__}")


def _place(rng: random.Random, shapes: Sequence[str], colors: Sequence[str], relation: str | None = None) -> list[ShapeObject]:
    """Rejection-sample non-overlapping boxes (and, for ``relation``, a clear relation of 0 w.r.t. 1)."""
    low, high = _SIZE_RANGE_FEW if len(shapes) <= 2 else _SIZE_RANGE_MANY
    for _ in range(10_000):
        objects: list[ShapeObject] = []
        for shape, color in zip(shapes, colors):
            size = rng.uniform(low, high)
            lo, hi = _BORDER + size / 2, 1 - _BORDER - size / 2
            for _ in range(200):
                candidate = ShapeObject(shape, color, (rng.uniform(lo, hi), rng.uniform(lo, hi)), size)
                if all(_box_gap(candidate, other) >= _GAP for other in objects):
                    objects.append(candidate)
                    break
            else:
                break
        if len(objects) != len(shapes):
            continue
        if relation is not None and not _relation_clear(objects[0], objects[1], relation):
            continue
        return objects
    raise RuntimeError(f"could not place {list(shapes)} (relation {relation!r}); the geometry constants are inconsistent")


def sample_metadata(rng: random.Random | np.random.Generator | int | None, task: str) -> dict[str, Any]:
    """A random prompt of ``task`` (its metadata), drawn as GenEval draws its prompts."""
    rng = _as_random(rng)
    if task not in TASKS:
        raise GrammarError(f"unknown task {task!r}; ShapesWorld tasks: {', '.join(TASKS)}")
    if task == "single_object":
        return make_metadata(task, [rng.choice(SHAPES)])
    if task == "counting":
        return make_metadata(task, [rng.choice(SHAPES)], count=rng.choice(COUNTS))
    if task == "colors":
        return make_metadata(task, [rng.choice(SHAPES)], [rng.choice(list(COLORS))])
    pair = rng.sample(SHAPES, 2)
    if task == "two_object":
        return make_metadata(task, pair)
    if task == "position":
        return make_metadata(task, pair, relation=rng.choice(RELATIONS))
    return make_metadata(task, pair, rng.sample(list(COLORS), 2))


def scene_for(metadata: Mapping[str, Any], rng: random.Random | np.random.Generator | int | None = None) -> Scene:
    """A random scene that the prompt ``metadata`` describes exactly (unspecified colours drawn at random)."""
    rng = _as_random(rng)
    metadata = parse_caption(caption(metadata))  # validates and normalises
    tag, include = metadata["tag"], metadata["include"]
    colors = list(COLORS)
    if tag == "position":
        target, positioned = include
        shapes = [positioned["class"], target["class"]]
        objects = _place(rng, shapes, [rng.choice(colors) for _ in shapes], relation=positioned["position"][0])
    else:
        shapes = [c["class"] for c in include for _ in range(c["count"])]
        chosen = [c.get("color") or rng.choice(colors) for c in include for _ in range(c["count"])]
        objects = _place(rng, shapes, chosen)
    return Scene(objects=objects, metadata=metadata)


def sample_scene(rng: random.Random | np.random.Generator | int | None, task: str) -> Scene:
    """A random scene of ``task`` with its metadata; deterministic given the rng state."""
    rng = _as_random(rng)
    return scene_for(sample_metadata(rng, task), rng)


def sample_prompts(n: int, seed: int = 0, tasks: Sequence[str] | Mapping[str, float] = TASKS) -> list[dict[str, Any]]:
    """``n`` random prompts (metadata dicts) with tasks drawn per :func:`generate_dataset`'s rule."""
    return [sample_metadata(_item_rng(seed, i), _pick_task(_item_rng(seed, i, "task"), tasks)) for i in range(n)]


# -------------------------------------------------------------------------------------- rendering
def _rgb(color: str | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(color, str):
        if color in COLORS:
            return COLORS[color]
        if color in ("gray", "grey"):
            return BACKGROUND
        raise GrammarError(f"unknown colour {color!r}; use an RGB triple or one of {list(COLORS)} / 'gray'")
    rgb = tuple(int(v) for v in color)
    if len(rgb) != 3:
        raise ValueError(f"a colour must be an RGB triple, got {color!r}")
    return rgb  # type: ignore[return-value]


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:
        raise GrammarError(f"unknown shape {shape!r}; ShapesWorld shapes: {', '.join(SHAPES)}")


def render(scene: Scene, size: int = IMAGE_SIZE, background: str | Sequence[int] = BACKGROUND) -> Image.Image:
    """Draw the scene as an RGB ``size×size`` PIL image (antialiased by supersampling)."""
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), _rgb(background))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        # pixel-edge coordinates: PIL's inclusive right/bottom edge needs the -1
        _draw(draw, obj.shape, (x0 * big, y0 * big, x1 * big - 1, y1 * big - 1), _rgb(obj.color))
    return image.resize((size, size), Image.Resampling.BOX)


def render_tensor(scene: Scene, size: int = IMAGE_SIZE, background: str | Sequence[int] = BACKGROUND) -> torch.Tensor:
    """:func:`render` as a ``3×H×W`` float tensor in [0, 1]."""
    array = np.asarray(render(scene, size, background), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def shape_sdf(shape: str, px: torch.Tensor, py: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Signed distance from points ``(px, py)`` to the outline of ``shape`` as :func:`render` draws it
    (box centre ``(cx, cy)``, side ``size``), negative inside; exact inside, approximate beyond corners.

    All arguments broadcast; units are pixels with pixel centres at ``i + 0.5``.
    """
    half = size / 2
    dx, dy = px - cx, py - cy
    if shape == "circle":
        sdf = torch.sqrt(dx**2 + dy**2) - half
    elif shape == "square":
        sdf = torch.maximum(dx.abs(), dy.abs()) - half
    elif shape == "triangle":  # apex (cx, cy - h), base corners (cx ± h, cy + h)
        below_apex = dy + half
        root5 = 5**0.5
        sdf = torch.maximum(dy - half, torch.maximum((-2 * dx - below_apex) / root5, (2 * dx - below_apex) / root5))
    else:
        raise GrammarError(f"unknown shape {shape!r}; ShapesWorld shapes: {', '.join(SHAPES)}")
    return sdf


def shape_coverage(shape: str, px: torch.Tensor, py: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Approximate pixel coverage ``clamp(0.5 - sdf, 0, 1)`` (the one-pixel antialiasing model)."""
    return (0.5 - shape_sdf(shape, px, py, cx, cy, size)).clamp(0, 1)


#: Where the centroid of each (filled, uniform) shape sits, as a fraction of the box side below the
#: box centre, and the shape's area as a fraction of the box area: the judge fits boxes with these.
SHAPE_CENTROID_OFFSET: dict[str, float] = {"circle": 0.0, "square": 0.0, "triangle": 1 / 6}
SHAPE_FILL: dict[str, float] = {"circle": 3.141592653589793 / 4, "square": 1.0, "triangle": 0.5}


# --------------------------------------------------------------------------------------- datasets
def _item_rng(seed: int, index: int, stream: str = "scene") -> random.Random:
    # one independent stream per (seed, item): any item can be regenerated alone, in any order
    return random.Random(f"shapesworld/{seed}/{index}/{stream}")


def _pick_task(rng: random.Random, tasks: Sequence[str] | Mapping[str, float]) -> str:
    if isinstance(tasks, Mapping):
        names, weights = list(tasks), [float(w) for w in tasks.values()]
    else:
        names, weights = list(tasks), [1.0] * len(tasks)
    if not names or sum(weights) <= 0:
        raise ValueError(f"tasks must name at least one task with positive weight, got {tasks!r}")
    for name in names:
        if name not in TASKS:
            raise GrammarError(f"unknown task {name!r}; ShapesWorld tasks: {', '.join(TASKS)}")
    return rng.choices(names, weights=weights)[0]


def make_sample(index: int, seed: int = 0, size: int = IMAGE_SIZE, tasks: Sequence[str] | Mapping[str, float] = TASKS) -> Sample:
    """Item ``index`` of the dataset with this ``seed``: the same whatever else is generated."""
    task = _pick_task(_item_rng(seed, index, "task"), tasks)
    scene = scene_for(sample_metadata(_item_rng(seed, index), task), _item_rng(seed, index, "layout"))
    return Sample(image=render_tensor(scene, size), caption=scene.caption, metadata=scene.metadata, scene=scene)


def iter_dataset(n: int | None = None, seed: int = 0, size: int = IMAGE_SIZE, tasks: Sequence[str] | Mapping[str, float] = TASKS, start: int = 0) -> Iterator[Sample]:
    """Stream samples ``start, start+1, ...`` (forever when ``n`` is None); item i equals ``make_sample(i)``."""
    index = start
    while n is None or index < start + n:
        yield make_sample(index, seed, size, tasks)
        index += 1


def generate_dataset(n: int, seed: int = 0, size: int = IMAGE_SIZE, tasks: Sequence[str] | Mapping[str, float] = TASKS) -> list[Sample]:
    """``n`` samples (image, caption, metadata). ``tasks`` is a list (uniform) or a ``{task: weight}`` mix."""
    return list(iter_dataset(n, seed, size, tasks))


class ShapesDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``n`` ShapesWorld samples rendered on the fly (workers need no shared state).

    Items are dicts ``{"image": 3×H×W, "caption": str, "metadata": dict}``; the default collate
    stacks images and lists captions; wrap metadata lists with :func:`collate_samples` if needed.
    """

    def __init__(self, n: int, seed: int = 0, size: int = IMAGE_SIZE, tasks: Sequence[str] | Mapping[str, float] = TASKS):
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        self.n, self.seed, self.size, self.tasks = n, seed, size, tasks

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        sample = make_sample(index, self.seed, self.size, self.tasks)
        return {"image": sample.image, "caption": sample.caption, "metadata": sample.metadata}


def collate_samples(items: Sequence[Sample | Mapping[str, Any]]) -> dict[str, Any]:
    """Batch samples: ``{"image": B×3×H×W, "caption": [str], "metadata": [dict]}``."""
    get = (lambda item, key: getattr(item, key)) if items and isinstance(items[0], Sample) else (lambda item, key: item[key])
    return {
        "image": torch.stack([get(i, "image") for i in items]),
        "caption": [get(i, "caption") for i in items],
        "metadata": [get(i, "metadata") for i in items],
    }


def min_object_pixels(size: int = IMAGE_SIZE) -> float:
    """Side in pixels of the smallest object sampled at this image size."""
    return min(_SIZE_RANGE_FEW[0], _SIZE_RANGE_MANY[0]) * size


__all__ = [
    "BACKGROUND", "COLORS", "COUNTS", "GrammarError", "IMAGE_SIZE", "NUMBERS", "POSITION_THRESHOLD",
    "RELATIONS", "SHAPES", "Sample", "Scene", "ShapeObject", "ShapesDataset", "TASKS", "caption",
    "collate_samples", "generate_dataset", "iter_dataset", "make_metadata", "make_sample", "parse_caption",
    "relation_components", "relations", "render", "render_tensor", "sample_metadata", "sample_prompts",
    "sample_scene", "scene_for", "shape_coverage", "shape_sdf", "SHAPE_CENTROID_OFFSET", "SHAPE_FILL",
]
