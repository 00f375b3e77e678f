"""ShapesWorld in motion: the image world's shapes and colours moving along straight paths.

A clip is ``frames`` images (8 to 16) of one scene whose objects either move at constant speed in
one of :data:`DIRECTIONS` or stay still. Every frame is drawn by the image world's renderer
(:func:`diffalign.shapes.world.render_tensor`), so a frame of a clip is a ShapesWorld image.

Captions name every object with its motion; each object phrase is ``a {colour?} {shape} moving
{to the left|to the right|up|down}`` or ``a still {colour?} {shape}``, joined by "and":

  =================  ==============================================================
  moving             a {A} moving {d}
  colored_motion     a {c} {A} moving {d}
  still              a still {c} {A}
  two_moving         a {c1} {A} moving {d1} and a {c2} {B} moving {d2}  (A ≠ B, c1 ≠ c2)
  moving_and_still   a {c1} {A} moving {d1} and a still {c2} {B}     (either order)
  =================  ==============================================================

Metadata rows are ``{"tag", "objects": [{"class", "color"?, "motion"}], "prompt"}`` with ``motion``
one of :data:`MOTIONS`. Geometry (normalised, x right, y down): a moving object travels
``TRAVEL_RANGE`` of the image side over the clip; every object stays inside the border in every
frame, and two objects keep the image world's gap in every frame, so each frame is unambiguous.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from diffalign.errors import UserError

from . import world
from .world import COLORS, SHAPES, GrammarError, Scene, ShapeObject

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
MOTIONS: tuple[str, ...] = DIRECTIONS + ("still",)
#: unit step of each motion in normalised image coordinates (y grows downward)
MOTION_VECTORS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}
MOTION_TASKS: tuple[str, ...] = ("moving", "colored_motion", "still", "two_moving", "moving_and_still")
DEFAULT_FRAMES = 8
FRAME_RANGE = (8, 16)
VIDEO_SIZE = world.IMAGE_SIZE
#: distance a moving object travels over the whole clip, as a fraction of the image side
TRAVEL_RANGE = (0.25, 0.40)
_PHRASES = {"left": "moving to the left", "right": "moving to the right", "up": "moving up", "down": "moving down"}
_SIZE_RANGE_ONE = (0.24, 0.34)  # the image world's sizes for 1-2 objects ...
_SIZE_RANGE_TWO = (0.20, 0.28)  # ... a little smaller for two moving objects, which need room to pass


@dataclass(frozen=True)
class MovingObject:
    """An object of the image world plus its motion: ``start`` is the box centre in frame 0 and
    ``travel`` the distance its centre covers from the first frame to the last."""

    shape: str
    color: str
    start: tuple[float, float]
    size: float
    motion: str
    travel: float = 0.0

    def centre_at(self, progress: float) -> tuple[float, float]:
        """Centre at ``progress`` in [0, 1] of the clip: ``start + progress * travel * direction``."""
        dx, dy = MOTION_VECTORS[self.motion]
        return (self.start[0] + progress * self.travel * dx, self.start[1] + progress * self.travel * dy)

    def at(self, progress: float) -> ShapeObject:
        return ShapeObject(self.shape, self.color, self.centre_at(progress), self.size)


@dataclass
class MotionScene:
    """Moving objects plus the metadata their caption states (``metadata["prompt"]`` is the caption)."""

    objects: list[MovingObject]
    metadata: dict[str, Any]

    @property
    def tag(self) -> str:
        return self.metadata["tag"]

    @property
    def caption(self) -> str:
        return self.metadata["prompt"]

    def frame(self, index: int, frames: int) -> Scene:
        """The image-world scene of frame ``index`` of a ``frames``-frame clip."""
        progress = index / (frames - 1) if frames > 1 else 0.0
        return Scene(objects=[obj.at(progress) for obj in self.objects], metadata=self.metadata)


@dataclass
class VideoSample:
    """One training example: ``video`` is ``T×3×H×W`` float in [0, 1]."""

    video: torch.Tensor
    caption: str
    metadata: dict[str, Any]
    scene: MotionScene | None = None


# --------------------------------------------------------------------------------------- grammar
def _object_phrase(shape: str, color: str | None, motion: str) -> str:
    words = " ".join(w for w in (color, shape) if w)
    if motion == "still":
        return f"a still {words}"
    return f"{world.article(words)} {words} {_PHRASES[motion]}"


def make_motion_metadata(tag: str, objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Metadata (with its prompt) of a clip caption; ``objects`` are ``{"class", "color"?, "motion"}`` in caption order."""
    rows = []
    for obj in objects:
        shape, color, motion = obj.get("class"), obj.get("color"), obj.get("motion")
        world._check_vocab(shape=shape, color=color)
        if motion not in MOTIONS:
            raise GrammarError(f"unknown motion {motion!r}; ShapesWorld motions: {', '.join(MOTIONS)}")
        rows.append({"class": shape, **({"color": color} if color else {}), "motion": motion})
    if not rows:
        raise GrammarError("a motion caption names at least one object")
    if len(rows) == 2 and (rows[0]["class"] == rows[1]["class"] or rows[0].get("color", 0) == rows[1].get("color", 1)):
        raise GrammarError(f"the two objects of a caption need different shapes and colours, got {rows}")
    prompt = " and ".join(_object_phrase(r["class"], r.get("color"), r["motion"]) for r in rows)
    return {"tag": tag, "objects": rows, "prompt": prompt}


def _task_of(rows: Sequence[Mapping[str, Any]]) -> str:
    if len(rows) == 2:
        return "two_moving" if all(r["motion"] != "still" for r in rows) else "moving_and_still"
    if rows[0]["motion"] == "still":
        return "still"
    return "colored_motion" if rows[0].get("color") else "moving"


def _phrase_pattern() -> re.Pattern[str]:
    shape, color = "|".join(SHAPES), "|".join(COLORS)
    moving = "|".join(_PHRASES.values())
    return re.compile(
        rf"(?:a still (?:(?P<sc>{color}) )?(?P<ss>{shape})|(?:a|an) (?:(?P<mc>{color}) )?(?P<ms>{shape}) (?P<m>{moving}))"
    )


def parse_motion_caption(text: str) -> dict[str, Any]:
    """Caption -> motion metadata; the inverse of :func:`make_motion_metadata` ("moving left" is read
    as "moving to the left"; whitespace, case and a final full stop are normalised).

    Raises :class:`GrammarError` naming the text when it is outside the grammar.
    """
    if not isinstance(text, str):
        raise GrammarError(f"a caption must be a string, got {type(text).__name__}")
    normalised = " ".join(text.lower().strip().rstrip(".").split())
    normalised = re.sub(r"\bmoving (left|right)\b", r"moving to the \1", normalised)
    pattern, phrases = _phrase_pattern(), {v: k for k, v in _PHRASES.items()}
    rows = []
    parts = normalised.split(" and ")
    for part in parts:
        match = pattern.fullmatch(part)
        if match is None or len(parts) > 2:
            rows = []
            break
        g = match.groupdict()
        if g["ss"]:
            rows.append({"class": g["ss"], "color": g["sc"], "motion": "still"})
        else:
            rows.append({"class": g["ms"], "color": g["mc"], "motion": phrases[g["m"]]})
    if rows:
        metadata = make_motion_metadata(_task_of(rows), rows)
        if metadata["prompt"] == normalised:  # "an square" is not in the grammar
            return metadata
    raise GrammarError(
        f"caption {text!r} is outside the ShapesWorld motion grammar: expected one or two phrases "
        f"'a [colour] shape moving to the left|to the right|up|down' or 'a still [colour] shape' joined by 'and', "
        f"over shapes {list(SHAPES)} and colours {list(COLORS)}, e.g. 'a red circle moving up and a still blue square'"
    )


def motion_metadata(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """A caption or a metadata dict, validated and normalised through the grammar."""
    if isinstance(value, str):
        return parse_motion_caption(value)
    if isinstance(value, Mapping):
        if "objects" in value:
            return make_motion_metadata(_task_of(value["objects"]), value["objects"])
        if isinstance(value.get("prompt"), str):
            return parse_motion_caption(value["prompt"])
        raise GrammarError(f"motion metadata needs an 'objects' list or a 'prompt', got keys {sorted(value)}")
    raise TypeError(f"a prompt must be a caption string or a metadata dict, got {type(value).__name__}")


def sample_motion_metadata(rng: random.Random | np.random.Generator | int | None, task: str) -> dict[str, Any]:
    """A random caption of ``task`` (its metadata)."""
    rng = world._as_random(rng)
    if task not in MOTION_TASKS:
        raise GrammarError(f"unknown motion task {task!r}; tasks: {', '.join(MOTION_TASKS)}")
    colors = list(COLORS)
    if task == "moving":
        return make_motion_metadata(task, [{"class": rng.choice(SHAPES), "motion": rng.choice(DIRECTIONS)}])
    if task == "colored_motion":
        return make_motion_metadata(task, [{"class": rng.choice(SHAPES), "color": rng.choice(colors), "motion": rng.choice(DIRECTIONS)}])
    if task == "still":
        return make_motion_metadata(task, [{"class": rng.choice(SHAPES), "color": rng.choice(colors), "motion": "still"}])
    shapes, pair_colors = rng.sample(SHAPES, 2), rng.sample(colors, 2)
    motions = [rng.choice(DIRECTIONS), rng.choice(DIRECTIONS)]
    if task == "moving_and_still":
        motions[rng.randrange(2)] = "still"
    return make_motion_metadata(task, [{"class": s, "color": c, "motion": m} for s, c, m in zip(shapes, pair_colors, motions)])


def wrong_captions(scene: MotionScene, rng: random.Random | int | None = None) -> dict[str, dict[str, Any]]:
    """False captions of a clip, one per kind of error, each changing one object of the true caption:
    ``direction`` (another direction), ``color`` (a colour no object of the clip has), ``shape`` (a shape
    no object has), ``motion`` (moving <-> still). Kinds that do not apply (``direction`` of a still
    object) are left out."""
    rng = world._as_random(rng)
    rows = [dict(r) for r in scene.metadata["objects"]]
    index = rng.randrange(len(rows))
    used_colors = {o.color for o in scene.objects}
    used_shapes = {o.shape for o in scene.objects}
    out: dict[str, dict[str, Any]] = {}

    def changed(**update: Any) -> dict[str, Any]:
        new = [dict(r) for r in rows]
        new[index].update(update)
        return make_motion_metadata(_task_of(new), new)

    motion_now = rows[index]["motion"]
    if motion_now != "still":
        out["direction"] = changed(motion=rng.choice([d for d in DIRECTIONS if d != motion_now]))
    out["color"] = changed(color=rng.choice([c for c in COLORS if c not in used_colors]))
    out["shape"] = changed(**{"class": rng.choice([s for s in SHAPES if s not in used_shapes])})
    out["motion"] = changed(motion="still" if motion_now != "still" else rng.choice(DIRECTIONS))
    return out


# -------------------------------------------------------------------------------------- geometry
def _min_gap(a: MovingObject, b: MovingObject, frames: int) -> float:
    return min(world._box_gap(a.at(t / (frames - 1)), b.at(t / (frames - 1))) for t in range(frames))


def _place_moving(rng: random.Random, rows: Sequence[Mapping[str, Any]], colors: Sequence[str], frames: int) -> list[MovingObject]:
    low, high = _SIZE_RANGE_ONE if len(rows) == 1 else _SIZE_RANGE_TWO
    for _ in range(10_000):
        objects: list[MovingObject] = []
        for row, color in zip(rows, colors):
            size = rng.uniform(low, high)
            travel = rng.uniform(*TRAVEL_RANGE) if row["motion"] != "still" else 0.0
            lo, hi = world._BORDER + size / 2, 1 - world._BORDER - size / 2
            dx, dy = MOTION_VECTORS[row["motion"]]
            # the start range that keeps the whole path inside [lo, hi]
            x_range = (lo - min(0.0, dx * travel), hi - max(0.0, dx * travel))
            y_range = (lo - min(0.0, dy * travel), hi - max(0.0, dy * travel))
            obj = MovingObject(row["class"], color, (rng.uniform(*x_range), rng.uniform(*y_range)), size, row["motion"], travel)
            objects.append(obj)
        if len(objects) == 2 and _min_gap(objects[0], objects[1], frames) < world._GAP:
            continue
        return objects
    raise RuntimeError(f"could not place {list(rows)} in {frames} frames; the geometry constants are inconsistent")


def check_frames(frames: int) -> int:
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not FRAME_RANGE[0] <= frames <= FRAME_RANGE[1]:
        raise UserError(f"frames must be an integer in [{FRAME_RANGE[0]}, {FRAME_RANGE[1]}], got {frames!r}")
    return int(frames)


def motion_scene_for(metadata: str | Mapping[str, Any], rng: random.Random | np.random.Generator | int | None = None, frames: int = DEFAULT_FRAMES) -> MotionScene:
    """A random clip that the caption (or metadata) describes exactly; unspecified colours drawn at random."""
    rng = world._as_random(rng)
    metadata = motion_metadata(metadata)
    check_frames(frames)
    rows = metadata["objects"]
    colors = [r.get("color") or rng.choice(list(COLORS)) for r in rows]
    return MotionScene(objects=_place_moving(rng, rows, colors, frames), metadata=metadata)


# -------------------------------------------------------------------------------------- rendering
def render_video(scene: MotionScene, frames: int = DEFAULT_FRAMES, size: int = VIDEO_SIZE) -> torch.Tensor:
    """The clip as a ``T×3×H×W`` float tensor in [0, 1], each frame drawn by the image world's renderer."""
    check_frames(frames)
    return torch.stack([world.render_tensor(scene.frame(t, frames), size) for t in range(frames)])


def render_videos(scenes: Sequence[MotionScene], frames: int = DEFAULT_FRAMES, size: int = VIDEO_SIZE) -> torch.Tensor:
    """Clips as ``B×T×3×H×W`` (the package's video convention)."""
    return torch.stack([render_video(scene, frames, size) for scene in scenes])


# --------------------------------------------------------------------------------------- datasets
def _item_rng(seed: int, index: int, stream: str) -> random.Random:
    # one independent stream per (seed, item): any clip can be regenerated alone, in any order
    return random.Random(f"shapesworld-motion/{seed}/{index}/{stream}")


def _pick_task(rng: random.Random, tasks: Sequence[str] | Mapping[str, float]) -> str:
    names, weights = (list(tasks), [float(w) for w in tasks.values()]) if isinstance(tasks, Mapping) else (list(tasks), [1.0] * len(tasks))
    if not names or sum(weights) <= 0:
        raise UserError(f"tasks must name at least one motion task with positive weight, got {tasks!r}")
    for name in names:
        if name not in MOTION_TASKS:
            raise GrammarError(f"unknown motion task {name!r}; tasks: {', '.join(MOTION_TASKS)}")
    return rng.choices(names, weights=weights)[0]


def make_video_sample(index: int, seed: int = 0, frames: int = DEFAULT_FRAMES, size: int = VIDEO_SIZE,
                      tasks: Sequence[str] | Mapping[str, float] = MOTION_TASKS) -> VideoSample:
    """Clip ``index`` of the dataset with this ``seed``: the same whatever else is generated."""
    task = _pick_task(_item_rng(seed, index, "task"), tasks)
    metadata = sample_motion_metadata(_item_rng(seed, index, "caption"), task)
    scene = motion_scene_for(metadata, _item_rng(seed, index, "layout"), frames)
    return VideoSample(video=render_video(scene, frames, size), caption=scene.caption, metadata=scene.metadata, scene=scene)


def sample_motion_prompts(n: int, seed: int = 0, tasks: Sequence[str] | Mapping[str, float] = MOTION_TASKS,
                          exclude: Sequence[str] = ()) -> list[str]:
    """``n`` motion captions, tasks drawn as :func:`make_video_sample` draws them; captions in ``exclude``
    (e.g. an evaluation suite's) are skipped, so the stream stays the same for any ``n``."""
    excluded, prompts, index = set(exclude), [], 0
    while len(prompts) < n:
        task = _pick_task(_item_rng(seed, index, "task"), tasks)
        caption = sample_motion_metadata(_item_rng(seed, index, "caption"), task)["prompt"]
        index += 1
        if caption not in excluded:
            prompts.append(caption)
        elif index > 1000 * (n + 1):
            raise UserError(f"tasks {tasks!r} have no captions outside the excluded ones")
    return prompts


def iter_video_dataset(n: int, seed: int = 0, frames: int = DEFAULT_FRAMES, size: int = VIDEO_SIZE,
                       tasks: Sequence[str] | Mapping[str, float] = MOTION_TASKS, start: int = 0) -> Iterator[VideoSample]:
    for index in range(start, start + n):
        yield make_video_sample(index, seed, frames, size, tasks)


def generate_video_dataset(n: int, seed: int = 0, frames: int = DEFAULT_FRAMES, size: int = VIDEO_SIZE,
                           tasks: Sequence[str] | Mapping[str, float] = MOTION_TASKS) -> list[VideoSample]:
    """``n`` clips (video ``T×3×H×W``, caption, metadata); ``tasks`` a list (uniform) or a ``{task: weight}`` mix."""
    return list(iter_video_dataset(n, seed, frames, size, tasks))


class ShapesVideoDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``n`` clips rendered on the fly: ``{"video": T×3×H×W, "caption", "metadata"}``."""

    def __init__(self, n: int, seed: int = 0, frames: int = DEFAULT_FRAMES, size: int = VIDEO_SIZE,
                 tasks: Sequence[str] | Mapping[str, float] = MOTION_TASKS):
        if n <= 0:
            raise UserError(f"n must be positive, got {n}")
        check_frames(frames)
        self.n, self.seed, self.frames, self.size, self.tasks = n, seed, frames, size, tasks

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} clips")
        sample = make_video_sample(index, self.seed, self.frames, self.size, self.tasks)
        return {"video": sample.video, "caption": sample.caption, "metadata": sample.metadata}


__all__ = [
    "DEFAULT_FRAMES", "DIRECTIONS", "FRAME_RANGE", "MOTIONS", "MOTION_TASKS", "MOTION_VECTORS", "MotionScene",
    "MovingObject", "ShapesVideoDataset", "TRAVEL_RANGE", "VIDEO_SIZE", "VideoSample", "check_frames",
    "generate_video_dataset", "iter_video_dataset", "make_motion_metadata", "make_video_sample", "motion_metadata",
    "motion_scene_for", "parse_motion_caption", "render_video", "render_videos", "sample_motion_metadata",
    "wrong_captions",
]
