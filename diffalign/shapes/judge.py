"""The ShapesWorld judge: a rule-based detector and GenEval's scoring rules, exact on ShapesWorld.

**Detector** (:func:`detect_batch`, vectorised over the batch, on the images' device):

1. Background = per-image median of the border pixels (so off-grey generations still work).
2. Each pixel ``p`` is explained as a blend of the background ``b`` and one palette colour ``c``:
   ``p - b ≈ α (c - b)``, with ``α = <p - b, c - b> / |c - b|²``. The pixel takes the colour with
   the smallest residual ``|p - b - α (c - b)|`` among colours with ``α ≥ min_alpha``; it is
   foreground when that residual is below ``max_residual``. Antialiased and blurred edges therefore
   keep their object's colour instead of drifting to a neighbouring one.
3. Connected foreground regions (4-connected, label propagation with pointer jumping). A region
   takes its majority colour (JPEG chroma and blur smear edges into neighbouring colours), unless
   a second colour holds a real share of it (two touching objects): then it is split by colour.
4. Regions too small, too large or too elongated are dropped (noise specks, stray background).
5. Shape by analysis by synthesis: for each shape, the box side follows from the region's soft
   mass (``side = sqrt(mass / fill)``) and its centre from the centroid; the shape is drawn there
   with the world's own geometry (:func:`diffalign.shapes.world.shape_sdf`) at a few edge widths
   (unknown blur) and compared with the soft mask by soft IoU; the best shape wins. Mass and
   centroid survive blur and noise, and adding a shape to the world extends the judge.
6. ``confidence`` = shape evidence (best IoU, and its margin over the runner-up) × colour evidence
   (mean residual) × scene evidence (share of the image near the background colour): ~1 on clean
   renders, low on ambiguous blobs, off-palette smears and busy garbage images.

**Verdict** (:func:`judge`), GenEval's ``evaluate_images.py`` rules from the shared engine
:mod:`diffalign.eval.geneval.rules` (colours come from the detector, not from CLIP):

* detections with confidence > ``threshold`` (``counting_threshold`` for counting prompts),
  highest first, at most ``max_objects`` per class;
* ``include`` clauses are AND-ed: at least ``count`` detections of the class; colour: at least
  ``count`` of the top-``count`` detections have the colour; position: each of the clause's objects
  stands in the relation to every object of the target group (:func:`~diffalign.shapes.world.relations`,
  ``position_threshold`` 0.1, components beyond 0.5);
* ``exclude`` clauses are OR-ed: fail when at least ``count`` detections of the class exist.

``score`` is the dense partial credit of Flow-GRPO's GenEval reward: the mean over the prompt's
constraints of ``1 - |N_ref - N_det| / N_ref`` for an exact count (a class with an exclude clause),
``min(N_det, N_ref) / N_ref`` for an at-least count, ``1 - |N_ref - N_colour| / N_ref`` for a colour
(0 when the count is short) and 1/0 for a relation. ``correct`` ⇔ every rule passes ⇔ ``score == 1``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from diffalign.media import MediaError

from . import world

# soft IoU of the best shape hypothesis: clean renders reach ~0.9+, a wrong shape stays below ~0.8
_IOU_CLEAN = 0.85
_IOU_FLOOR = 0.6
_IOU_MARGIN = 0.04  # best minus second-best IoU at which the shape is unambiguous (clean renders: >= 0.06)
_EDGE_WIDTHS = (1.0, 2.0, 3.5)  # pixels; 1 = a crisp antialiased render
_RIM = 2  # pixels around a component that still carry its blurred or antialiased edge
_ALPHA_SOFT_FLOOR = 0.15  # blend fractions below it count as background (noise), above 1 - it as solid
_BACKGROUND_TOLERANCE = 0.25  # RGB distance to the border colour that still counts as background
_MIN_BACKGROUND_SHARE = 0.3  # scenes with less background than this yield no confident detection
_CLEAN_BACKGROUND_SHARE = 0.55  # ShapesWorld scenes are >= ~70 % background
# a second colour covering this share of a region marks two touching objects, not a smeared edge
_MIXED_SHARE = 0.3


@dataclass(frozen=True)
class Detection:
    """One detected object. ``box`` is ``(x0, y0, x1, y1)`` in pixels (pixel edges), ``area`` in pixels."""

    shape: str
    color: str
    box: tuple[float, float, float, float]
    centre: tuple[float, float]
    area: float
    confidence: float
    shape_scores: dict[str, float] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["box"] = [round(v, 2) for v in self.box]
        out["centre"] = [round(v, 2) for v in self.centre]
        out["confidence"] = round(self.confidence, 4)
        out["shape_scores"] = {k: round(v, 4) for k, v in self.shape_scores.items()}
        return out


@dataclass
class Verdict:
    """``correct``: GenEval's binary verdict; ``score``: fraction of the constraints met (partial credit)."""

    correct: bool
    score: float
    reason: str
    details: dict[str, Any]


@dataclass(frozen=True)
class JudgeConfig:
    """Detector tolerances and GenEval's options (``threshold``, ``counting_threshold``, ``max_objects``,
    ``position_threshold``). ``counting_threshold`` is 0.9 in GenEval, where it suppresses Mask2Former's
    duplicate low-score masks; this detector has no duplicates and scores clean objects near 1."""

    threshold: float = 0.3
    counting_threshold: float = 0.5
    max_objects: int = 16
    position_threshold: float = world.POSITION_THRESHOLD
    min_alpha: float = 0.5  # blend fraction of the object colour above which a pixel is foreground
    max_residual: float = 0.3  # off-palette tolerance (RGB distance in [0, 1] units)
    min_area_fraction: float = 0.008  # of the image area; the smallest ShapesWorld object is ~0.02
    max_area_fraction: float = 0.5
    max_aspect: float = 2.0
    min_side: int = 3


DEFAULT_CONFIG = JudgeConfig()
def _palette(device: torch.device) -> tuple[list[str], torch.Tensor]:
    names = list(world.COLORS)
    return names, torch.tensor([world.COLORS[n] for n in names], dtype=torch.float32, device=device) / 255.0


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise MediaError(f"images must be a torch.Tensor (B×3×H×W or 3×H×W in [0, 1]), got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise MediaError(f"images must be B×3×H×W or 3×H×W RGB in [0, 1], got shape {tuple(images.shape)}")
    if images.shape[-1] < 4 or images.shape[-2] < 4:
        raise MediaError(f"images are too small to judge: {tuple(images.shape)}")
    # garbage in (NaN, inf, out of range) -> clamp; the verdict then says what is (not) there
    return torch.nan_to_num(images.detach().float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)


def _connected_components(colour_label: torch.Tensor) -> torch.Tensor:
    """4-connected components of equal non-zero labels; returns ids (0 = background) per pixel.

    Ids are pixel indices + 1 propagated as a max within each component; pointer jumping
    (``id <- id[id]``) speeds convergence up.
    """
    batch, height, width = colour_label.shape
    fg = colour_label > 0
    flat_index = torch.arange(1, height * width + 1, device=colour_label.device).view(1, height, width)
    ids = torch.where(fg, flat_index.expand(batch, -1, -1), torch.zeros((), dtype=torch.long, device=fg.device))
    padded_label = F.pad(colour_label, (1, 1, 1, 1), value=0)
    same = [
        (padded_label[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] == colour_label) & fg
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
    ]
    # convex blobs up to half the image converge within max(H, W) steps; long snaking regions of a
    # garbage image may stop earlier split into pieces, which the size and shape tests then drop
    for _ in range(max(height, width)):
        padded = F.pad(ids, (1, 1, 1, 1), value=0)
        new = ids
        for (dy, dx), ok in zip(((-1, 0), (1, 0), (0, -1), (0, 1)), same):
            neighbour = padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            new = torch.where(ok, torch.maximum(new, neighbour), new)
        # pointer jumping: the pixel named by my id is in my component and holds an id >= mine
        jumped = torch.gather(new.view(batch, -1), 1, (new.view(batch, -1) - 1).clamp(min=0)).view_as(new)
        new = torch.where(fg, torch.maximum(new, jumped), new)
        if torch.equal(new, ids):
            break
        ids = new
    return ids


def detect_batch(images: torch.Tensor, config: JudgeConfig = DEFAULT_CONFIG, chunk_size: int = 256) -> list[list[Detection]]:
    """Detections for every image of a ``B×3×H×W`` batch (never raises on image content).

    Images are processed ``chunk_size`` at a time: the per-pixel palette tensors are ``8×`` the
    images, and cache-sized chunks are faster than one huge batch.
    """
    x = _as_batch(images)
    results: list[list[Detection]] = []
    for start in range(0, x.shape[0], chunk_size):
        results.extend(_detect_chunk(x[start : start + chunk_size], config))
    return results


def _detect_chunk(x: torch.Tensor, config: JudgeConfig) -> list[list[Detection]]:
    batch, _, height, width = x.shape
    device = x.device
    names, palette = _palette(device)

    border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)
    background = border.median(dim=2).values  # B×3
    offset = x - background[:, :, None, None]  # B×3×H×W
    direction = palette[None] - background[:, None, :]  # B×K×3
    norm2 = (direction**2).sum(-1)  # B×K
    alpha = torch.einsum("bchw,bkc->bkhw", offset, direction) / norm2.clamp(min=1e-6)[:, :, None, None]
    alpha_used = alpha.clamp(max=1.25)
    # |o - a v|² = |o|² - 2 a <o, v> + a² |v|², with <o, v> = alpha |v|² (no B×K×3×H×W tensor)
    v2 = norm2[:, :, None, None]
    residual2 = (offset**2).sum(1, keepdim=True) - 2 * alpha_used * alpha * v2 + alpha_used**2 * v2
    residual = residual2.clamp(min=0).sqrt()  # B×K×H×W
    usable = (alpha >= config.min_alpha) & (norm2 > 0.15**2)[:, :, None, None]
    residual = torch.where(usable, residual, torch.full_like(residual, float("inf")))
    best_residual, best_colour = residual.min(dim=1)  # B×H×W
    foreground = best_residual <= config.max_residual
    fg_index = foreground.nonzero(as_tuple=False)  # P×3 (b, y, x)
    if fg_index.numel() == 0:
        return [[] for _ in range(batch)]
    b_idx, y_idx, x_idx = fg_index.unbind(1)
    pixel_colour = best_colour[b_idx, y_idx, x_idx]
    image_area = height * width
    min_area = max(4.0, config.min_area_fraction * image_area)

    # Pass 1: foreground regions whatever their pixels' colours (JPEG chroma and blur smear edges
    # into neighbouring palette colours). A region takes its majority colour, unless a second colour
    # holds a real share of it (two touching objects): then pass 2 splits it by colour.
    ids = _connected_components(foreground.long())
    _, region = torch.unique(b_idx * (image_area + 1) + ids[b_idx, y_idx, x_idx], return_inverse=True)
    hist = torch.zeros(int(region.max()) + 1, len(names), device=device)
    hist.index_put_((region, pixel_colour), torch.ones_like(region, dtype=torch.float32), accumulate=True)
    top = hist.topk(2, dim=1)
    mixed = (top.values[:, 1] >= _MIXED_SHARE * hist.sum(1)) & (top.values[:, 1] >= min_area)
    pixel_label = torch.where(mixed[region], pixel_colour, top.indices[region, 0])
    if bool(mixed.any()):
        label_map = torch.zeros_like(best_colour)
        label_map[b_idx, y_idx, x_idx] = pixel_label + 1
        ids = _connected_components(label_map)
    keys = b_idx * (image_area + 1) + ids[b_idx, y_idx, x_idx]
    unique_keys, component = torch.unique(keys, return_inverse=True)
    count = unique_keys.numel()

    def reduce(values: torch.Tensor, how: str, init: float) -> torch.Tensor:
        out = torch.full((count,), init, dtype=torch.float32, device=device)
        return out.scatter_reduce(0, component, values.float(), reduce=how, include_self=False)

    area = torch.bincount(component, minlength=count).float()
    x0, x1 = reduce(x_idx, "amin", 0), reduce(x_idx, "amax", 0) + 1
    y0, y1 = reduce(y_idx, "amin", 0), reduce(y_idx, "amax", 0) + 1
    mean_residual = reduce(residual[b_idx, pixel_label, y_idx, x_idx].clamp(max=1.0), "mean", 0)
    comp_batch = (unique_keys // (image_area + 1)).long()
    comp_colour = reduce(pixel_label, "amax", 0).long()
    box_w, box_h = x1 - x0, y1 - y0

    keep = (
        (area >= min_area)
        & (area <= config.max_area_fraction * image_area)
        & (torch.minimum(box_w, box_h) >= config.min_side)
        & (torch.maximum(box_w, box_h) <= config.max_aspect * torch.minimum(box_w, box_h))
    )
    kept = keep.nonzero(as_tuple=False).flatten()
    results: list[list[Detection]] = [[] for _ in range(batch)]
    if kept.numel() == 0:
        return results

    # Analysis by synthesis: each shape hypothesis gets its box from the component's soft mass
    # (area -> side, centroid -> centre) and is drawn with the world's geometry; the hypothesis whose
    # drawing best matches the soft mask (soft IoU) wins. Mass and centroid survive blur and noise.
    comp_map = torch.full((batch, height, width), -1, dtype=torch.long, device=device)
    comp_map[b_idx, y_idx, x_idx] = component
    # work on a window around each component, chunked by size so windows stay tight
    kept = kept[torch.argsort(torch.maximum(box_w, box_h)[kept])]
    fits = []  # per chunk: (iou N×S, cx N, centre y N×S, side N×S)
    for chunk in kept.split(512):
        win = int(torch.maximum(box_w, box_h)[chunk].max()) + 2 * _RIM + 2
        steps = torch.arange(win, device=device)
        gy = y0[chunk].long()[:, None] - _RIM - 1 + steps  # N×win
        gx = x0[chunk].long()[:, None] - _RIM - 1 + steps
        inside = ((gy >= 0) & (gy < height))[:, :, None] & ((gx >= 0) & (gx < width))[:, None, :]
        bsel = comp_batch[chunk][:, None, None]
        gyc, gxc = gy.clamp(0, height - 1)[:, :, None], gx.clamp(0, width - 1)[:, None, :]
        masks = ((comp_map[bsel, gyc, gxc] == chunk[:, None, None]) & inside).float()  # N×win×win
        near = F.max_pool2d(masks[:, None], 2 * _RIM + 1, stride=1, padding=_RIM)[:, 0]  # + a rim of edge pixels
        blend = alpha[bsel, comp_colour[chunk][:, None, None], gyc, gxc] * inside
        py, px = gy[:, :, None].float() + 0.5, gx[:, None, :].float() + 0.5
        coverage = ((blend - _ALPHA_SOFT_FLOOR) / (1 - 2 * _ALPHA_SOFT_FLOOR)).clamp(0, 1) * near
        mass = coverage.sum((-1, -2)).clamp(min=1e-6)
        cx = (coverage * px).sum((-1, -2)) / mass
        cy = (coverage * py).sum((-1, -2)) / mass
        ious, centres_y, sides = [], [], []
        for shape in world.SHAPES:
            side = torch.sqrt(mass / world.SHAPE_FILL[shape])
            centre_y = cy - world.SHAPE_CENTROID_OFFSET[shape] * side
            sdf = world.shape_sdf(shape, px, py, cx[:, None, None], centre_y[:, None, None], side[:, None, None])
            best = torch.zeros_like(mass)
            for edge in _EDGE_WIDTHS:  # blur of the observed image, unknown: try a few edge widths
                drawn = (0.5 - sdf / edge).clamp(0, 1)
                inter = torch.minimum(coverage, drawn).sum((-1, -2))
                union = torch.maximum(coverage, drawn).sum((-1, -2)).clamp(min=1e-6)
                best = torch.maximum(best, inter / union)
            ious.append(best)
            centres_y.append(centre_y)
            sides.append(side)
        fits.append((torch.stack(ious, 1), cx, torch.stack(centres_y, 1), torch.stack(sides, 1)))
    shape_iou = torch.cat([f[0] for f in fits])  # N×S
    fit_cx = torch.cat([f[1] for f in fits])
    best_iou, best_shape = shape_iou.max(dim=1)
    rows_n = torch.arange(best_shape.numel(), device=device)
    fit_cy = torch.cat([f[2] for f in fits])[rows_n, best_shape]
    fit_side = torch.cat([f[3] for f in fits])[rows_n, best_shape]
    runner_up = shape_iou.topk(2, dim=1).values[:, 1] if shape_iou.shape[1] > 1 else torch.zeros_like(best_iou)
    shape_conf = ((best_iou - _IOU_FLOOR) / (_IOU_CLEAN - _IOU_FLOOR)).clamp(0, 1)
    shape_conf = shape_conf * ((best_iou - runner_up) / _IOU_MARGIN).clamp(0, 1)  # ambiguous blobs are no shape
    colour_conf = (1 - (mean_residual[kept] / config.max_residual) ** 2).clamp(0, 1)
    # a ShapesWorld image is mostly background; where little of it is near the border colour, the
    # "objects" are patches of a busy or garbage image, not shapes on a canvas
    background_share = (offset.norm(dim=1) < _BACKGROUND_TOLERANCE).float().mean((-1, -2))  # B
    scene_conf = ((background_share - _MIN_BACKGROUND_SHARE) / (_CLEAN_BACKGROUND_SHARE - _MIN_BACKGROUND_SHARE)).clamp(0, 1)
    confidence = shape_conf * colour_conf * scene_conf[comp_batch[kept]]

    half = fit_side / 2
    rows = torch.stack(
        [comp_batch[kept].float(), fit_cx - half, fit_cy - half, fit_cx + half, fit_cy + half, area[kept], confidence,
         best_shape.float(), comp_colour[kept].float()],
        dim=1,
    ).cpu().tolist()
    ious = shape_iou.cpu().tolist()
    for row, iou in zip(rows, ious):
        b, bx0, by0, bx1, by1, comp_area, conf, shape_i, colour_i = row
        results[int(b)].append(
            Detection(
                shape=world.SHAPES[int(shape_i)],
                color=names[int(colour_i)],
                box=(bx0, by0, bx1, by1),
                centre=((bx0 + bx1) / 2, (by0 + by1) / 2),
                area=comp_area,
                confidence=conf,
                shape_scores=dict(zip(world.SHAPES, iou)),
            )
        )
    for dets in results:
        dets.sort(key=lambda d: -d.confidence)
    return results


def detect(image: torch.Tensor, config: JudgeConfig = DEFAULT_CONFIG) -> list[Detection]:
    """Detections in one ``3×H×W`` image in [0, 1], highest confidence first."""
    if isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] != 1:
        raise MediaError(f"detect takes one image (3×H×W); use detect_batch for a batch of {image.shape[0]}")
    return detect_batch(image, config)[0]


def _as_metadata(prompt_or_metadata: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(prompt_or_metadata, str):
        return world.parse_caption(prompt_or_metadata)
    if isinstance(prompt_or_metadata, Mapping):
        if "include" not in prompt_or_metadata:
            raise world.GrammarError(f"metadata needs an 'include' list (GenEval format), got keys {sorted(prompt_or_metadata)}")
        return dict(prompt_or_metadata)
    raise TypeError(f"a prompt must be a caption string or a GenEval metadata dict, got {type(prompt_or_metadata).__name__}")


def verdict(detections: Sequence[Detection], metadata: Mapping[str, Any], config: JudgeConfig = DEFAULT_CONFIG) -> Verdict:
    """Apply GenEval's rules (:func:`diffalign.eval.geneval.evaluate`) to already computed detections,
    and add the dense partial credit (see the module docstring)."""
    # diffalign.eval imports this module (ShapesEval), so the engine is imported when first used
    from diffalign.eval.geneval.rules import Detection as GenEvalDetection
    from diffalign.eval.geneval.rules import GenEvalOptions, evaluate

    metadata = _as_metadata(metadata)
    options = GenEvalOptions(
        threshold=config.threshold,
        counting_threshold=config.counting_threshold,
        max_objects=config.max_objects,
        position_threshold=config.position_threshold,
    )
    by_class: dict[str, list[GenEvalDetection]] = {}
    colour_of: dict[int, str] = {}  # the detector already knows each object's colour
    for det in sorted(detections, key=lambda d: -d.confidence):
        candidate = GenEvalDetection(box=det.box, score=det.confidence)
        colour_of[id(candidate)] = det.color
        by_class.setdefault(det.shape, []).append(candidate)
    result = evaluate(metadata, by_class, lambda objects, _: [colour_of[id(o)] for o in objects], options)

    exact = {c["class"] for c in metadata.get("exclude", [])}
    credits: list[dict[str, Any]] = []
    for clause in result.clauses:
        name, want, n_det = clause.clause["class"], int(clause.clause["count"]), clause.available
        count_credit = max(0.0, 1 - abs(want - n_det) / want) if name in exact else min(n_det, want) / want
        credits.append({"constraint": f"count {name}", "credit": count_credit})
        if "color" in clause.clause:
            n_colour = clause.colors.count(clause.clause["color"]) if clause.count_ok else 0
            colour_credit = 1 - abs(want - n_colour) / want if clause.count_ok else 0.0
            credits.append({"constraint": f"color {clause.clause['color']} {name}", "credit": colour_credit})
        if "position" in clause.clause:
            relation, target_group = clause.clause["position"][0], int(clause.clause["position"][1])
            credits.append({"constraint": f"{name} {relation} group {target_group}", "credit": float(bool(clause.position_ok))})
    score = sum(c["credit"] for c in credits) / len(credits) if credits else float(result.correct)
    details = {
        "detections": [d.as_dict() for d in detections],
        "classes": {name: [list(d.box) for d in dets] for name, dets in result.objects.items()},
        "credits": credits,
    }
    return Verdict(correct=result.correct, score=float(score), reason=result.reason, details=details)


def judge_batch(
    images: torch.Tensor,
    prompts_or_metadata: Sequence[str | Mapping[str, Any]],
    config: JudgeConfig = DEFAULT_CONFIG,
) -> list[Verdict]:
    """Verdicts for ``B×3×H×W`` images against captions (parsed with the grammar) or metadata dicts."""
    batch = _as_batch(images)
    if isinstance(prompts_or_metadata, (str, Mapping)):
        prompts_or_metadata = [prompts_or_metadata]
    metadata = [_as_metadata(p) for p in prompts_or_metadata]  # fail on bad prompts before any work
    if len(metadata) != batch.shape[0]:
        raise ValueError(f"{batch.shape[0]} images but {len(metadata)} prompts; give one prompt per image")
    return [verdict(dets, meta, config) for dets, meta in zip(detect_batch(batch, config), metadata)]


def judge(image: torch.Tensor, prompt_or_metadata: str | Mapping[str, Any], config: JudgeConfig = DEFAULT_CONFIG) -> Verdict:
    """Verdict for one ``3×H×W`` image against a caption or a GenEval metadata dict."""
    return judge_batch(image, [prompt_or_metadata], config)[0]


__all__ = ["DEFAULT_CONFIG", "Detection", "JudgeConfig", "Verdict", "detect", "detect_batch", "judge", "judge_batch", "verdict"]
