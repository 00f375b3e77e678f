"""The ShapesWorld video judge: per-frame detection, tracks across frames, exact verdicts per caption.

1. **Detection**: every frame of every clip goes through the image judge's detector
   (:func:`diffalign.shapes.judge.detect_batch`, one batch for all frames); detections with
   confidence above ``threshold`` are kept, at most ``max_objects`` per frame.
2. **Tracks**: detections are linked frame to frame by nearest centre, whatever their shape and
   colour (so an object that changes shape or colour stays one track and is caught), greedily by
   distance, within ``MAX_STEP`` of the image side per elapsed frame.
3. **Assignment**: each object of the caption gets its own track, the assignment maximising the
   number of frames whose detection has the caption's shape (and colour, when stated).
4. **Constraints** per caption object, with credit in [0, 1]:

   * ``present``: matching frames / ``T`` (the object, with its shape and colour, in every frame);
   * ``identity``: share of the track's detections with one identity (the caption's shape, and its
     colour or else the track's most common one): no shape or colour change over time;
   * ``motion``: the displacement ``d`` over the clip is the least-squares slope of the track's
     centres against frame index times ``T - 1``, in image sides. A track *moves* in direction
     ``u`` when ``<d, u> >= MIN_TRAVEL``, the perpendicular part is at most ``MAX_SIDEWAYS`` of it
     and the path is straight (RMS residual of the fit <= ``MAX_WOBBLE``); it is *still* when
     ``|d| <= STILL_TRAVEL`` and no centre strays more than ``STILL_TRAVEL`` from the mean. Credit 1
     when the caption's motion holds, else ``0.5 * clamp(<d, u> / MIN_TRAVEL, 0, 1)`` for a wanted
     direction and ``0.5 * clamp(1 - |d| / MIN_TRAVEL, 0, 1)`` for a wanted still object.

``score`` = mean credit over all constraints; ``correct`` ⇔ every credit is 1. Ground-truth clips
travel at least 0.25 image sides (:data:`diffalign.shapes.motion.TRAVEL_RANGE`), so the thresholds
leave a wide margin both ways.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any, Mapping, Sequence

import torch

from diffalign.media import MediaError, check_media

from . import judge as image_judge
from . import motion
from .judge import DEFAULT_CONFIG, Detection, JudgeConfig, Verdict

MAX_STEP = 0.15  # largest centre jump between consecutive frames, in image sides
MIN_TRAVEL = 0.12  # a moving object covers at least this along its direction
MAX_SIDEWAYS = 0.5  # ... with at most this share of it sideways
MAX_WOBBLE = 0.05  # RMS distance from the straight fit, in image sides
STILL_TRAVEL = 0.05  # a still object's displacement and spread stay below this
_MAX_TRACKS = 16  # longest tracks considered in the assignment (noise makes many short ones)


@dataclass
class Track:
    """One object followed through the clip: ``frames[i]`` is the frame of ``detections[i]``."""

    frames: list[int] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)

    def as_dict(self, width: int) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "shapes": [d.shape for d in self.detections],
            "colors": [d.color for d in self.detections],
            "centres": [[round(d.centre[0] / width, 4), round(d.centre[1] / width, 4)] for d in self.detections],
        }


def _as_videos(videos: torch.Tensor) -> torch.Tensor:
    if isinstance(videos, torch.Tensor) and videos.ndim == 4:
        videos = videos[None]
    check_media(videos, "video")
    if videos.shape[1] < 2:
        raise MediaError(f"a video needs at least 2 frames to show motion, got shape {tuple(videos.shape)}")
    return videos.detach().float().clamp(0, 1)


def detect_videos(videos: torch.Tensor, config: JudgeConfig = DEFAULT_CONFIG) -> list[list[list[Detection]]]:
    """``[video][frame] -> detections`` for ``B×T×3×H×W`` clips (never raises on content)."""
    x = _as_videos(videos)
    batch, frames = x.shape[:2]
    flat = image_judge.detect_batch(x.reshape(batch * frames, *x.shape[2:]).nan_to_num(0.0), config)
    kept = [[d for d in dets if d.confidence > config.threshold][: config.max_objects] for dets in flat]
    return [kept[b * frames : (b + 1) * frames] for b in range(batch)]


def track(frame_detections: Sequence[Sequence[Detection]], width: int) -> list[Track]:
    """Link detections into tracks by nearest centre (see the module docstring), longest first."""
    tracks: list[Track] = []
    for t, dets in enumerate(frame_detections):
        pairs = []
        for j, det in enumerate(dets):
            for k, tr in enumerate(tracks):
                last = tr.detections[-1]
                distance = math.dist(det.centre, last.centre) / width
                if distance <= MAX_STEP * (t - tr.frames[-1]):
                    pairs.append((distance, j, k))
        used_dets: set[int] = set()
        used_tracks: set[int] = set()
        for _, j, k in sorted(pairs):
            if j in used_dets or k in used_tracks:
                continue
            used_dets.add(j)
            used_tracks.add(k)
            tracks[k].frames.append(t)
            tracks[k].detections.append(dets[j])
        tracks.extend(Track([t], [det]) for j, det in enumerate(dets) if j not in used_dets)
    return sorted(tracks, key=lambda tr: -len(tr.frames))


def _matches(det: Detection, obj: Mapping[str, Any]) -> bool:
    return det.shape == obj["class"] and ("color" not in obj or det.color == obj["color"])


def displacement(tr: Track, frames: int, width: int) -> tuple[tuple[float, float], float, float]:
    """``(d, wobble, spread)``: displacement over the clip (slope × (T-1)), RMS residual of the straight
    fit and largest distance from the mean centre, all in image sides."""
    t = torch.tensor(tr.frames, dtype=torch.float64)
    xy = torch.tensor([d.centre for d in tr.detections], dtype=torch.float64) / width
    mean_t, mean_xy = t.mean(), xy.mean(0)
    spread = float((xy - mean_xy).norm(dim=1).max())
    if len(tr.frames) < 2:
        return (0.0, 0.0), 0.0, spread
    slope = ((t - mean_t)[:, None] * (xy - mean_xy)).sum(0) / ((t - mean_t) ** 2).sum()
    fit = mean_xy + (t - mean_t)[:, None] * slope
    wobble = float(((xy - fit) ** 2).sum(1).mean().sqrt())
    d = slope * (frames - 1)
    return (float(d[0]), float(d[1])), wobble, spread


def motion_credit(tr: Track, wanted: str, frames: int, width: int) -> tuple[float, str]:
    """Credit of the caption's motion for a track, and the motion the track shows (``unclear`` when neither)."""
    (dx, dy), wobble, spread = displacement(tr, frames, width)
    travel = math.hypot(dx, dy)
    shown = "unclear"
    if len(tr.frames) >= 2 and travel <= STILL_TRAVEL and spread <= STILL_TRAVEL:
        shown = "still"
    elif len(tr.frames) >= 2 and wobble <= MAX_WOBBLE:
        for name in motion.DIRECTIONS:
            ux, uy = motion.MOTION_VECTORS[name]
            along, sideways = dx * ux + dy * uy, abs(dx * uy - dy * ux)
            if along >= MIN_TRAVEL and sideways <= MAX_SIDEWAYS * along:
                shown = name
    if shown == wanted:
        return 1.0, shown
    if wanted == "still":
        return 0.5 * min(max(1 - travel / MIN_TRAVEL, 0.0), 1.0), shown
    ux, uy = motion.MOTION_VECTORS[wanted]
    return 0.5 * min(max((dx * ux + dy * uy) / MIN_TRAVEL, 0.0), 1.0), shown


def _assign(objects: Sequence[Mapping[str, Any]], tracks: Sequence[Track]) -> list[Track | None]:
    """Distinct tracks for the caption objects, maximising matching frames (ties: longer tracks first)."""
    candidates = list(tracks[:_MAX_TRACKS])
    matched = [[sum(_matches(d, obj) for d in tr.detections) for tr in candidates] for obj in objects]
    best: tuple[int, ...] | None = None
    best_total = -1
    slots = list(range(len(candidates))) + [-1] * len(objects)  # -1: no track
    for choice in dict.fromkeys(permutations(slots, len(objects))):
        picked = [c for c in choice if c >= 0]
        if len(set(picked)) != len(picked):
            continue
        total = sum(matched[i][c] for i, c in enumerate(choice) if c >= 0)
        if total > best_total:
            best, best_total = choice, total
    return [candidates[c] if c >= 0 else None for c in (best or ())]


def video_verdict(frame_detections: Sequence[Sequence[Detection]], metadata: str | Mapping[str, Any], width: int,
                  tracks: Sequence[Track] | None = None) -> Verdict:
    """The verdict for one clip's per-frame detections against a caption or motion metadata
    (``tracks``: :func:`track` of the detections, when already computed for another caption)."""
    metadata = motion.motion_metadata(metadata)
    frames = len(frame_detections)
    tracks = track(frame_detections, width) if tracks is None else tracks
    credits: list[dict[str, Any]] = []
    reasons: list[str] = []
    assigned = _assign(metadata["objects"], tracks) if tracks else [None] * len(metadata["objects"])
    for obj, tr in zip(metadata["objects"], assigned):
        name = " ".join(w for w in (obj.get("color"), obj["class"]) if w)
        if tr is None:
            credits += [{"constraint": f"{name} present", "credit": 0.0}, {"constraint": f"{name} identity", "credit": 0.0},
                        {"constraint": f"{name} {obj['motion']}", "credit": 0.0}]
            reasons.append(f"no {name} found")
            continue
        present = sum(_matches(d, obj) for d in tr.detections) / frames
        colours = [d.color for d in tr.detections if d.shape == obj["class"]] or [d.color for d in tr.detections]
        reference_colour = obj.get("color") or max(set(colours), key=colours.count)
        identity = sum(d.shape == obj["class"] and d.color == reference_colour for d in tr.detections) / len(tr.detections)
        move, shown = motion_credit(tr, obj["motion"], frames, width)
        credits += [{"constraint": f"{name} present", "credit": present}, {"constraint": f"{name} identity", "credit": identity},
                    {"constraint": f"{name} {obj['motion']}", "credit": move}]
        if present < 1:
            reasons.append(f"{name} in {round(present * frames)} of {frames} frames")
        if identity < 1:
            reasons.append(f"{name} changes shape or colour")
        if move < 1:
            reasons.append(f"{name} is {shown}, not {obj['motion']}")
    score = sum(c["credit"] for c in credits) / len(credits)
    correct = all(c["credit"] >= 1.0 - 1e-9 for c in credits)
    details = {"credits": credits, "tracks": [tr.as_dict(width) for tr in tracks[:_MAX_TRACKS]]}
    return Verdict(correct=correct, score=float(score), reason="; ".join(reasons), details=details)


def judge_videos(videos: torch.Tensor, prompts_or_metadata: Sequence[str | Mapping[str, Any]] | str,
                 config: JudgeConfig = DEFAULT_CONFIG) -> list[Verdict]:
    """Verdicts for ``B×T×3×H×W`` clips against motion captions or metadata, one per clip."""
    if isinstance(prompts_or_metadata, (str, Mapping)):
        prompts_or_metadata = [prompts_or_metadata]
    metadata = [motion.motion_metadata(p) for p in prompts_or_metadata]  # bad prompts fail before any work
    x = _as_videos(videos)
    if len(metadata) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} videos but {len(metadata)} prompts; give one prompt per video")
    return [video_verdict(dets, meta, x.shape[-1]) for dets, meta in zip(detect_videos(x, config), metadata)]


def judge_video(video: torch.Tensor, prompt_or_metadata: str | Mapping[str, Any], config: JudgeConfig = DEFAULT_CONFIG) -> Verdict:
    """Verdict for one ``T×3×H×W`` clip."""
    return judge_videos(video, [prompt_or_metadata], config)[0]


__all__ = ["MAX_STEP", "MIN_TRAVEL", "STILL_TRAVEL", "Track", "detect_videos", "displacement", "judge_video", "judge_videos",
           "motion_credit", "track", "video_verdict"]
