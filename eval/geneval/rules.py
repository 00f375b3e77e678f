"""GenEval's scoring rules (``evaluation/evaluate_images.py``) as pure functions over detections.

Per image, with ``detections`` = class name -> the detector's unfiltered :class:`Detection` list:

1. **Filtering.** Per class, detections sorted by score (highest first) with ``score > threshold``
   (0.3; ``counting_threshold`` 0.9 when the tag is ``counting``), at most ``max_objects`` (16), then
   greedy NMS at ``max_overlap`` (1.0 = off, GenEval's default).
2. **include** clauses are AND-ed. A clause takes the first ``count`` objects of its class and fails
   when there are fewer. ``color``: those objects are classified and at least ``count`` must have
   the colour. ``position: [relation, group]`` (checked only while the clause still holds): every one
   of the clause's objects must stand in ``relation`` to every object of the earlier clause
   ``group``; when that clause failed there is "no target".
3. **exclude** clauses are OR-ed: fail when the class has ``>= count`` filtered detections (so a
   counting prompt needs exactly N confident objects).
4. **Relative position** of box A w.r.t. box B (:func:`relation_components`): centres ``c``, sizes
   ``d = (w, h)``, ``o = c_A - c_B``, ``o' = sign(o) · max(|o| - t·(d_A + d_B), 0)`` per axis with
   ``t = position_threshold`` (0.1); no relation when ``|o'| < 1e-3`` on both axes, else
   ``(dx, dy) = o' / ||o||`` and "left of" ⇔ ``dx < -0.5``, "right of" ⇔ ``dx > 0.5``, "above" ⇔
   ``dy < -0.5``, "below" ⇔ ``dy > 0.5`` (y grows downward).

The failure messages are GenEval's, joined by newlines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from diffalign.errors import UserError
from diffalign.eval.detection import Detection

#: the relations of GenEval's position prompts
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
#: the colours of GenEval's colour prompts, in its order
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

#: ``classify_colors(objects, classname) -> one colour name per object``
ColorClassifier = Callable[[Sequence[Detection], str], Sequence[str]]


class MetadataError(UserError):
    """A GenEval metadata row the rules cannot apply; the message names the problem."""


@dataclass(frozen=True)
class GenEvalOptions:
    """GenEval's ``--options``: detection thresholds, the per-class cap, NMS overlap, position shrink."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0
    position_threshold: float = 0.1

    def __post_init__(self) -> None:
        for name in ("threshold", "counting_threshold", "max_overlap", "position_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"GenEval option {name} must be a finite number, got {value!r}")
        if not 0 <= self.threshold <= 1 or not 0 <= self.counting_threshold <= 1:
            raise ValueError(f"GenEval thresholds must lie in [0, 1], got {self.threshold} and {self.counting_threshold}")
        if not 0 < self.max_overlap <= 1:
            raise ValueError(f"GenEval option max_overlap must lie in (0, 1], got {self.max_overlap}")
        if self.position_threshold < 0:
            raise ValueError(f"GenEval option position_threshold must be >= 0, got {self.position_threshold}")
        if isinstance(self.max_objects, bool) or not isinstance(self.max_objects, int) or self.max_objects < 1:
            raise ValueError(f"GenEval option max_objects must be a positive integer, got {self.max_objects!r}")


DEFAULT_OPTIONS = GenEvalOptions()


@dataclass
class ClauseResult:
    """What one ``include`` clause found: ``available`` filtered objects of its class, the first
    ``count`` of them in ``objects``, their ``colors`` (when classified) and which checks held
    (``None``: not checked)."""

    clause: Mapping[str, Any]
    available: int
    objects: list[Detection]
    count_ok: bool
    colors: list[str] | None = None
    color_ok: bool | None = None
    position_ok: bool | None = None

    @property
    def matched(self) -> bool:
        return self.count_ok and self.color_ok is not False and self.position_ok is not False


@dataclass
class Evaluation:
    """The verdict for one image, with the filtered objects and each include clause's result."""

    correct: bool
    reasons: list[str]
    objects: dict[str, list[Detection]]
    clauses: list[ClauseResult] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "\n".join(self.reasons)


# ----------------------------------------------------------------------------------- geometry
def relation_components(box_a: Sequence[float], box_b: Sequence[float], threshold: float = DEFAULT_OPTIONS.position_threshold) -> tuple[float, float] | None:
    """``(dx, dy)``: the shrunk offset of box A from box B over the norm of the raw offset; None when
    the shrunk offset is below 1e-3 on both axes (no relation). Boxes are ``(x0, y0, x1, y1)``."""
    a = np.asarray(box_a, dtype=np.float64)[:4]
    b = np.asarray(box_b, dtype=np.float64)[:4]
    center_a, center_b = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    dim_a, dim_b = np.abs(a[2:] - a[:2]), np.abs(b[2:] - b[:2])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return None
    dx, dy = revised / np.linalg.norm(offset)
    return float(dx), float(dy)


def relative_position(box_a: Sequence[float], box_b: Sequence[float], threshold: float = DEFAULT_OPTIONS.position_threshold) -> set[str]:
    """The :data:`RELATIONS` that hold for A relative to B (several can hold at once)."""
    components = relation_components(box_a, box_b, threshold)
    if components is None:
        return set()
    dx, dy = components
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU with pixel-inclusive areas ``(x1 - x0 + 1)·(y1 - y0 + 1)``, as GenEval's NMS computes it."""

    def area(x0: float, y0: float, x1: float, y1: float) -> float:
        return max(x1 - x0 + 1, 0) * max(y1 - y0 + 1, 0)

    inter = area(max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3]))
    union = area(*box_a[:4]) + area(*box_b[:4]) - inter
    return inter / union if union else 0.0


# ---------------------------------------------------------------------------------- filtering
def filter_detections(
    detections: Mapping[str, Sequence[Detection]], tag: str | None, options: GenEvalOptions = DEFAULT_OPTIONS
) -> dict[str, list[Detection]]:
    """GenEval's per-class filtering (threshold, sort, cap, optional NMS); classes left empty are dropped."""
    threshold = options.counting_threshold if tag == "counting" else options.threshold
    kept: dict[str, list[Detection]] = {}
    for classname, dets in detections.items():
        # NaN scores fail the comparison and are dropped; sorted() is stable for equal scores
        ordering = sorted((d for d in dets if float(d.score) > threshold), key=lambda d: -float(d.score))[: options.max_objects]
        chosen: list[Detection] = []
        while ordering:
            best = ordering.pop(0)
            chosen.append(best)
            if options.max_overlap < 1:
                ordering = [d for d in ordering if box_iou(best.box, d.box) < options.max_overlap]
        if chosen:
            kept[classname] = chosen
    return kept


def check_metadata(metadata: Mapping[str, Any]) -> None:
    """Raise :class:`MetadataError` naming the problem when ``metadata`` is not a GenEval row."""
    if not isinstance(metadata, Mapping):
        raise MetadataError(f"metadata must be a dict (a GenEval metadata row), got {type(metadata).__name__}")
    if not isinstance(metadata.get("include"), list):
        raise MetadataError(f"metadata needs an 'include' list, got keys {sorted(metadata)}")
    for key in ("include", "exclude"):
        clauses = metadata.get(key, [])
        if not isinstance(clauses, list):
            raise MetadataError(f"metadata {key!r} must be a list, got {type(clauses).__name__}")
        for index, clause in enumerate(clauses):
            where = f"{key}[{index}]"
            if not isinstance(clause, Mapping) or not isinstance(clause.get("class"), str) or not clause["class"]:
                raise MetadataError(f"{where} needs a 'class' name, got {clause!r}")
            count = clause.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise MetadataError(f"{where} needs a positive integer 'count', got {count!r}")
            if key == "exclude":
                continue
            if "color" in clause and not isinstance(clause["color"], str):
                raise MetadataError(f"{where} 'color' must be a colour name, got {clause['color']!r}")
            if "position" in clause:
                position = clause["position"]
                if (
                    not isinstance(position, (list, tuple)) or len(position) != 2 or position[0] not in RELATIONS
                    or isinstance(position[1], bool) or not isinstance(position[1], int) or not 0 <= position[1] < index
                ):
                    raise MetadataError(
                        f"{where} 'position' must be [relation, index of an earlier include clause] with a relation "
                        f"in {list(RELATIONS)}, got {position!r}"
                    )


# -------------------------------------------------------------------------------------- rules
def evaluate(
    metadata: Mapping[str, Any],
    detections: Mapping[str, Sequence[Detection]],
    classify_colors: ColorClassifier | None = None,
    options: GenEvalOptions = DEFAULT_OPTIONS,
) -> Evaluation:
    """GenEval's verdict for one image with everything the rules looked at (see the module docstring)."""
    check_metadata(metadata)
    objects = filter_detections(detections, metadata.get("tag"), options)
    correct = True
    reasons: list[str] = []
    clauses: list[ClauseResult] = []
    groups: list[list[Detection] | None] = []
    for clause in metadata["include"]:
        classname, want = clause["class"], clause["count"]
        available = objects.get(classname, [])
        result = ClauseResult(clause, len(available), available[:want], count_ok=len(available) >= want)
        if not result.count_ok:
            correct = False
            reasons.append(f"expected {classname}>={want}, found {len(result.objects)}")
        else:
            if "color" in clause:
                if classify_colors is None:
                    raise ValueError(
                        f"the prompt asks for a {clause['color']} {classname}: pass classify_colors "
                        "(e.g. CLIPColorClassifier().for_image(image))"
                    )
                colors = [str(c) for c in classify_colors(result.objects, classname)]
                if len(colors) != len(result.objects):
                    raise ValueError(f"classify_colors returned {len(colors)} colours for {len(result.objects)} objects")
                result.colors = colors
                hits = colors.count(clause["color"])
                result.color_ok = hits >= want
                if not result.color_ok:
                    correct = False
                    listed = [c for c in COLORS if c in colors] + [c for c in dict.fromkeys(colors) if c not in COLORS]
                    others = ", ".join(f"{colors.count(c)} {c}" for c in listed)
                    reasons.append(f"expected {clause['color']} {classname}>={want}, found {hits} {clause['color']}; and {others}")
            if "position" in clause and result.matched:
                relation, group = clause["position"][0], clause["position"][1]
                target = groups[group]
                if target is None:
                    correct = False
                    result.position_ok = False
                    reasons.append(f"no target for {classname} to be {relation}")
                else:
                    result.position_ok = True
                    for obj in result.objects:
                        for other in target:
                            found = relative_position(obj.box, other.box, options.position_threshold)
                            if relation not in found:
                                correct = False
                                result.position_ok = False
                                reasons.append(f"expected {classname} {relation} target, found {' and '.join(sorted(found))} target")
                                break
                        if not result.position_ok:
                            break
        clauses.append(result)
        groups.append(result.objects if result.matched else None)
    for clause in metadata.get("exclude", []):
        classname, limit = clause["class"], clause["count"]
        if len(objects.get(classname, [])) >= limit:
            correct = False
            reasons.append(f"expected {classname}<{limit}, found {len(objects[classname])}")
    return Evaluation(correct, reasons, objects, clauses)


def evaluate_detections(
    metadata: Mapping[str, Any],
    detections: Mapping[str, Sequence[Detection]],
    classify_colors: ColorClassifier | None = None,
    options: GenEvalOptions = DEFAULT_OPTIONS,
) -> tuple[bool, str]:
    """``(correct, reason)`` for one image under GenEval's rules; ``detections`` as the detector
    returns them (unfiltered), ``classify_colors(objects, classname) -> colours`` for colour clauses."""
    result = evaluate(metadata, detections, classify_colors, options)
    return result.correct, result.reason


__all__ = [
    "COLORS", "ClauseResult", "ColorClassifier", "DEFAULT_OPTIONS", "Detection", "Evaluation", "GenEvalOptions", "MetadataError",
    "RELATIONS", "box_iou", "check_metadata", "evaluate", "evaluate_detections", "filter_detections",
    "relation_components", "relative_position", "TASKS",
]
