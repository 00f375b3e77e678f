"""``shapes-reward``: a small differentiable image-text reward model for ShapesWorld, trained on the judge.

It plays PickScore to the judge's human rater: a learned proxy of :func:`diffalign.shapes.judge.judge`'s
dense score that gradients can flow through (the judge itself is rule-based and not differentiable).

**Architecture** (:class:`ShapesRewardModel`, ~0.3 M parameters): two towers, fused by FiLM.

* Caption tower: the caption is normalised by the world's grammar (:func:`~diffalign.shapes.world.parse_caption`)
  and split into words of the world's vocabulary (:func:`caption_vocabulary`); the caption vector is
  ``t = LN(e + MLP(e))`` with ``e = sum_i E[word_i, i]``, one learnt embedding per (word, position): the grammar
  is a few fixed templates, so a word's position names its role (first colour, second shape, relation).
* Image tower: a conv net over the ``32×32`` image, ``(x - 0.5) / 0.25`` (a stride-2 stem, then
  stages at ``16×16`` and ``8×8``); after each stage the features are
  modulated by the caption, ``h <- (1 + gamma(t)) * h + beta(t)`` (FiLM), so the caption decides which
  colours, shapes and places the features keep. The last ``8×8`` map is flattened (positions are kept:
  relations and counts depend on them) and an MLP gives a logit ``z``.
* ``score = sigmoid(z)`` in [0, 1], on the judge's scale.

A plain dot-product dual encoder (CLIP) cannot bind colours to shapes or count at this size: one image
vector must then answer every caption. FiLM keeps the towers separate but lets the caption steer the
image features.

**Training** (regression, not pairwise ranking): the target of a pair (image, caption) is the judge's
dense score ``s`` in [0, 1] and the loss is the binary cross-entropy with soft targets,
``L = -[s log sigmoid(z) + (1 - s) log(1 - sigmoid(z))]``, minimised at ``sigmoid(z) = E[s | image, caption]``.
Regression keeps the proxy on the judge's absolute scale, so the proxy and gold curves of a run can be
read against each other (reward hacking is the gap between them) and scores of different prompts are
comparable; a ranking loss fixes only the order within a prompt and leaves an arbitrary offset per prompt.

Data: rendered scenes (some with pixel noise) and images sampled from the shipped ``shapes-sd`` and
``shapes-flow`` models (at their default and at a low guidance scale), each paired with its own caption
and with other captions (one of the same task: near misses with partial credit; one of any task), all
scored by the judge. Generated pairs are half of every batch.

Reproduce the shipped model (seeded; ~10 minutes on one CPU thread)::

    python -m diffalign.shapes.reward train --out assets/models/shapes-reward

The folder holds ``model.safetensors`` (float32) and ``config.json`` (sizes, vocabulary, and the training
record: settings, seconds, held-out Spearman correlation with the judge).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffalign.errors import UserError, read_json

from . import world

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHIPPED_NAME = "shapes-reward"
PAD = "<pad>"


def caption_vocabulary() -> list[str]:
    """Every word the ShapesWorld grammar can write (index 0 is padding)."""
    words = ["a", "an", "photo", "of", "and", *world.SHAPES, *(world.plural(s) for s in world.SHAPES), *world.COLORS,
             *world.NUMBERS.values()]
    for relation in world.RELATIONS:
        words.extend(relation.split())
    return [PAD, *dict.fromkeys(words)]


@dataclass(frozen=True)
class RewardModelConfig:
    """Sizes of :class:`ShapesRewardModel` and the vocabulary it was trained with."""

    vocabulary: tuple[str, ...] = field(default_factory=lambda: tuple(caption_vocabulary()))
    max_words: int = 12
    text_dim: int = 64
    channels: tuple[int, ...] = (32, 48)  # 16x16 (the stem's stride-2 output), 8x8
    head_channels: int = 16
    hidden: int = 128
    image_size: int = world.IMAGE_SIZE

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["vocabulary"] = list(self.vocabulary)
        values["channels"] = list(self.channels)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RewardModelConfig":
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ShapesRewardModel(nn.Module):
    """``model(images B×3×32×32 in [0, 1], captions) -> logits [B]``; :meth:`score` = ``sigmoid(logits)``."""

    def __init__(self, config: RewardModelConfig = RewardModelConfig()):
        super().__init__()
        self.config = config
        c = config
        self.index = {word: i for i, word in enumerate(c.vocabulary)}
        # one embedding per (word, position): the grammar is a few fixed templates, so a word's position names its role
        self.word_embedding = nn.Embedding(len(c.vocabulary) * c.max_words, c.text_dim)
        self.text_mlp = nn.Sequential(nn.GELU(), nn.Linear(c.text_dim, c.text_dim), nn.GELU(), nn.Linear(c.text_dim, c.text_dim))
        self.text_norm = nn.LayerNorm(c.text_dim)
        self.stem = nn.Conv2d(3, c.channels[0], 4, stride=2, padding=1)
        self.stages = nn.ModuleList()
        self.films = nn.ModuleList()
        previous = c.channels[0]
        for index, width in enumerate(c.channels):
            self.stages.append(nn.ModuleList([
                nn.Conv2d(previous, width, 3, stride=1 if index == 0 else 2, padding=1),
                nn.GroupNorm(8, width),
                nn.Conv2d(width, width, 3, padding=1),
            ]))
            self.films.append(nn.Linear(c.text_dim, 2 * width))
            previous = width
        side = c.image_size // 2 ** len(c.channels)  # the stem and each later stage halve the side
        self.reduce = nn.Conv2d(previous, c.head_channels, 1)
        self.head = nn.Sequential(nn.Linear(c.head_channels * side * side + c.text_dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, 1))
        for film in self.films:  # start as the identity modulation
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)

    # ------------------------------------------------------------------------------ captions
    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Word ids ``B×max_words`` (0-padded); a caption outside the grammar raises :class:`GrammarError`."""
        rows = []
        for text in captions:
            words = world.parse_caption(text)["prompt"].split()
            if len(words) > self.config.max_words:
                raise UserError(f"caption {text!r} has {len(words)} words; shapes-reward reads at most {self.config.max_words}")
            missing = [w for w in words if w not in self.index]
            if missing:
                raise UserError(f"caption {text!r} uses words {missing} that this shapes-reward model was not trained on")
            ids = [self.index[w] for w in words]
            rows.append(ids + [0] * (self.config.max_words - len(ids)))
        return torch.tensor(rows, dtype=torch.long, device=self.word_embedding.weight.device)

    def encode_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """Caption vectors ``B×text_dim`` (each distinct caption encoded once)."""
        unique = list(dict.fromkeys(captions))
        ids = self.tokenize(unique)
        positions = torch.arange(ids.shape[1], device=ids.device) * len(self.config.vocabulary)
        keep = (ids != 0).float().unsqueeze(-1)
        summed = (self.word_embedding(ids + positions) * keep).sum(1)
        pooled = self.text_norm(summed + self.text_mlp(summed))
        where = torch.tensor([unique.index(c) for c in captions], device=pooled.device)
        return pooled[where]

    # -------------------------------------------------------------------------------- scores
    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"shapes-reward scores B×3×H×W images, got shape {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):  # differentiable resize to the training resolution
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        text = self.encode_captions(captions)
        h = F.gelu(self.stem((images - 0.5) / 0.25))
        for (down, norm, conv), film in zip(self.stages, self.films):
            h = F.gelu(norm(down(h)))
            gamma, beta = film(text).chunk(2, dim=-1)
            h = h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
            h = h + F.gelu(conv(h))
        features = F.gelu(self.reduce(h)).flatten(1)
        return self.head(torch.cat([features, text], dim=1)).squeeze(-1)

    def score(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Predicted judge score ``sigmoid(logit)`` in [0, 1] per image (differentiable in the images)."""
        return torch.sigmoid(self(images, captions))

    # ------------------------------------------------------------------------------- storage
    def save_pretrained(self, folder: str | Path, record: dict[str, Any] | None = None) -> Path:
        """``model.safetensors`` + ``config.json`` (sizes, vocabulary, and ``record``: how it was trained)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        payload = {"model_type": SHIPPED_NAME, **self.config.as_dict(), "training": record or {}}
        (folder / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "ShapesRewardModel":
        """Load a folder written by :meth:`save_pretrained` (safetensors only); errors name what is missing."""
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise UserError(f"{folder} is not a shapes-reward model folder: {name} is missing")
        values = read_json(folder / CONFIG_FILE, "shapes-reward config")
        if values.get("model_type") != SHIPPED_NAME:
            raise UserError(f"{folder / CONFIG_FILE}: model_type is {values.get('model_type')!r}, expected {SHIPPED_NAME!r}")
        model = cls(RewardModelConfig.from_dict(values))
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return model.to(device).eval()


def shipped_path() -> Path:
    """Folder of the shipped model (``assets/models/shapes-reward``)."""
    from diffalign.assets_path import asset_path

    return asset_path("models", SHIPPED_NAME)


# ------------------------------------------------------------------------------------ data
@dataclass
class RewardTrainConfig:
    """Everything that determines the trained model (``python -m diffalign.shapes.reward train``)."""

    seed: int = 0
    rendered: int = 6000  # rendered scenes
    generated: int = 256  # images sampled per shipped model (shapes-sd, shapes-flow)
    held_out: int = 64  # held-out images sampled per shipped model (other prompts and seeds)
    low_guidance: float = 1.5  # a third of the generated images use it: worse images, a wider spread of scores
    noise_fraction: float = 0.3  # rendered images given pixel noise (std up to noise_std)
    noise_std: float = 0.08
    steps: int = 1500
    batch_size: int = 64
    # measured (held-out Spearman on own captions, 128 images: about +-0.07): 0.49 at these defaults; 0.36 with
    # three quarters of every batch generated; 0.39 with a quarter, 2-pixel shifts and head dropout 0.3;
    # 0.49 (0.49 on all pairs, against 0.57) with 600 steps
    generated_fraction: float = 0.5  # of every batch
    max_shift: int = 0  # pixels of random translation (edge-replicated) of the training images
    lr: float = 2e-3
    weight_decay: float = 0.01
    sample_batch: int = 32

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Pairs:
    """Scored (image, caption) pairs: ``images`` uint8 N×3×H×W, ``index`` into images per pair."""

    images: torch.Tensor
    index: torch.Tensor
    captions: list[str]
    targets: torch.Tensor
    own: torch.Tensor  # the pair's caption is the one the image was made for

    def __len__(self) -> int:
        return len(self.captions)


def _other_captions(metadata: dict[str, Any], seed: int, index: int) -> list[str]:
    """One caption of the same task (a near miss) and one of any task, drawn from the item's own stream."""
    import random

    stream = random.Random(f"shapes-reward/{seed}/{index}")
    same = world.sample_metadata(stream, metadata["tag"])["prompt"]
    any_task = world.sample_metadata(stream, stream.choice(world.TASKS))["prompt"]
    return [same, any_task]


def score_pairs(images: torch.Tensor, captions: Sequence[str], seed: int, *, others: bool = True) -> Pairs:
    """Pair each float image with its caption (and, with ``others``, two other captions), scored by the judge."""
    from .judge import judge_batch

    index, pair_captions, own = [], [], []
    for i, text in enumerate(captions):
        extra = _other_captions(world.parse_caption(text), seed, i) if others else []
        for j, c in enumerate([text, *extra]):
            index.append(i)
            pair_captions.append(c)
            own.append(j == 0)
    index_t = torch.tensor(index)
    targets = []
    for start in range(0, len(index), 512):
        chunk = index_t[start : start + 512]
        targets.extend(v.score for v in judge_batch(images[chunk], pair_captions[start : start + 512]))
    uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return Pairs(uint8, index_t, pair_captions, torch.tensor(targets, dtype=torch.float32), torch.tensor(own))


def rendered_images(config: RewardTrainConfig) -> tuple[torch.Tensor, list[str]]:
    """Rendered scenes (dataset seed ``1000 + seed``: not the pretraining set), a fraction with pixel noise."""
    samples = world.generate_dataset(config.rendered, seed=1000 + config.seed)
    images = torch.stack([s.image for s in samples])
    generator = torch.Generator().manual_seed(config.seed)
    noisy = torch.rand(len(samples), generator=generator) < config.noise_fraction
    std = torch.rand(len(samples), 1, 1, 1, generator=generator) * config.noise_std
    noise = torch.randn(images.shape, generator=generator) * std
    images = torch.where(noisy[:, None, None, None], (images + noise).clamp(0, 1), images)
    return images, [s.caption for s in samples]


def generated_images(model: str, n: int, prompt_seed: int, image_seed: int, low_guidance: float | None,
                     batch: int = 32, progress: bool = True) -> tuple[torch.Tensor, list[str]]:
    """``n`` images sampled from a shipped model (``shapes-sd``/``shapes-flow``) with its default settings;
    with ``low_guidance``, every third batch uses that guidance scale instead."""
    from tqdm.auto import tqdm

    from diffalign.assets_path import asset_path
    from diffalign.pipelines import load

    from .models import read_defaults

    folder = asset_path("models", model)
    if not (folder / "model_index.json").is_file():
        raise UserError(f"shipped model {model!r} is missing under {folder}")
    adapter = load(str(folder), device="cpu")
    defaults = read_defaults(folder)
    prompts = [m["prompt"] for m in world.sample_prompts(n, seed=prompt_seed)]
    images = []
    with torch.no_grad():
        for number, start in enumerate(tqdm(range(0, n, batch), desc=f"sampling {model}", disable=not progress)):
            chunk = prompts[start : start + batch]
            guidance = low_guidance if (low_guidance is not None and number % 3 == 2) else defaults.get("guidance_scale", 4.0)
            generators = [torch.Generator().manual_seed(image_seed * 100_003 + start + k) for k in range(len(chunk))]
            rollout = adapter.sample(chunk, steps=defaults.get("num_inference_steps", 20), guidance_scale=guidance, generator=generators)
            images.append(rollout.media.detach().float().cpu().clamp(0, 1))
    return torch.cat(images), prompts


MODELS: tuple[str, ...] = ("shapes-sd", "shapes-flow")


def build_data(config: RewardTrainConfig, progress: bool = True) -> dict[str, Pairs]:
    """``{"rendered", "generated", "held_out"}`` scored pairs; held-out pairs use other prompts and seeds."""
    rendered, captions = rendered_images(config)
    data = {"rendered": score_pairs(rendered, captions, seed=config.seed)}
    generated, gen_captions, held, held_captions = [], [], [], []
    for number, model in enumerate(MODELS):
        images, prompts = generated_images(model, config.generated, 2000 + 10 * config.seed + number, config.seed * 7 + number,
                                           config.low_guidance, config.sample_batch, progress)
        generated.append(images)
        gen_captions.extend(prompts)
        images, prompts = generated_images(model, config.held_out, 3000 + 10 * config.seed + number, 500 + config.seed * 7 + number,
                                           None, config.sample_batch, progress)
        held.append(images)
        held_captions.extend(prompts)
    data["generated"] = score_pairs(torch.cat(generated), gen_captions, seed=config.seed + 1)
    data["held_out"] = score_pairs(torch.cat(held), held_captions, seed=config.seed + 2)
    return data


def save_pairs(data: dict[str, Pairs], path: str | Path) -> None:
    from safetensors.torch import save_file

    tensors, captions = {}, {}
    for name, pairs in data.items():
        for key in ("images", "index", "targets", "own"):
            tensors[f"{name}.{key}"] = getattr(pairs, key).contiguous()
        captions[name] = pairs.captions
    save_file(tensors, str(path), metadata={"captions": json.dumps(captions)})


def load_pairs(path: str | Path) -> dict[str, Pairs]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        captions = json.loads(f.metadata()["captions"])
        return {name: Pairs(*(f.get_tensor(f"{name}.{k}") for k in ("images", "index")), texts,
                            *(f.get_tensor(f"{name}.{k}") for k in ("targets", "own")))
                for name, texts in captions.items()}


# -------------------------------------------------------------------------------- training
def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (scipy's, ties averaged; ``pip install diffalign[shapes-reward]``)."""
    try:
        from scipy.stats import spearmanr
    except ModuleNotFoundError:
        raise UserError("the shapes-reward agreement needs scipy: pip install 'diffalign[shapes-reward]'") from None

    return float(spearmanr(list(a), list(b)).statistic)


@torch.no_grad()
def predict(model: ShapesRewardModel, pairs: Pairs, batch: int = 256) -> torch.Tensor:
    out = []
    for start in range(0, len(pairs), batch):
        idx = pairs.index[start : start + batch]
        out.append(model.score(pairs.images[idx].float() / 255, pairs.captions[start : start + batch]))
    return torch.cat(out)


def agreement(model: ShapesRewardModel, pairs: Pairs) -> dict[str, float]:
    """Spearman correlation with the judge on all pairs and on the images' own captions, and the mean abs error."""
    predicted = predict(model, pairs)
    own = pairs.own
    return {
        "spearman_own_captions": spearman(predicted[own].tolist(), pairs.targets[own].tolist()),
        "spearman_all_pairs": spearman(predicted.tolist(), pairs.targets.tolist()),
        "mean_abs_error": float((predicted - pairs.targets).abs().mean()),
        "pairs": len(pairs),
    }


def shift_images(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with the edge pixels."""
    if max_shift <= 0:
        return images
    size = images.shape[-1]
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets)])


def train_model(config: RewardTrainConfig, data: dict[str, Pairs], progress: bool = True) -> tuple[ShapesRewardModel, list[float]]:
    """AdamW with linear warm-up and cosine decay; ``generated_fraction`` of every batch are generated pairs,
    the rest rendered ones; images are randomly shifted by up to ``max_shift`` pixels."""
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    model = ShapesRewardModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed + 1)
    generated = int(round(config.batch_size * config.generated_fraction))
    sources = [data["rendered"], data["generated"]]
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="training shapes-reward", disable=not progress, mininterval=2.0)
    model.train()
    for step in bar:
        warm = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / config.steps)))
        images, captions, targets = [], [], []
        for pairs, count in zip(sources, (config.batch_size - generated, generated)):
            pick = torch.randint(len(pairs), (count,), generator=generator)
            images.append(pairs.images[pairs.index[pick]].float() / 255)  # no flips: relations are not mirror-symmetric
            captions.extend(pairs.captions[i] for i in pick.tolist())
            targets.append(pairs.targets[pick])
        logits = model(shift_images(torch.cat(images), config.max_shift, generator), captions)
        loss = F.binary_cross_entropy_with_logits(logits, torch.cat(targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return model.eval(), losses


def train(config: RewardTrainConfig, out: str | Path, data_cache: str | Path | None = None, progress: bool = True,
          log=print) -> dict[str, Any]:
    """Build the data (or read ``data_cache``), train, report agreement on the held-out generated images, save."""
    started = time.time()
    cache = Path(data_cache) if data_cache else None
    if cache is not None and cache.is_file():
        data = load_pairs(cache)
        log(f"read the scored pairs from {cache}")
    else:
        data = build_data(config, progress)
        if cache is not None:
            save_pairs(data, cache)
    data_seconds = time.time() - started
    model, losses = train_model(config, data, progress)
    held = agreement(model, data["held_out"])
    record = {
        "command": "python -m diffalign.shapes.reward train --out OUT",
        "settings": config.as_dict(),
        "pairs": {name: len(p) for name, p in data.items()},
        "judge_mean": {name: float(p.targets.mean()) for name, p in data.items()},
        "data_seconds": round(data_seconds, 1),
        "data_from_cache": cache is not None and data_seconds < 60,
        "train_seconds": round(time.time() - started - data_seconds, 1),
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "held_out": held,
        "torch_threads": torch.get_num_threads(),
    }
    model.save_pretrained(out, record)
    log(f"held-out generated images: Spearman {held['spearman_own_captions']:.3f} (own captions), "
        f"{held['spearman_all_pairs']:.3f} (all pairs), mean |error| {held['mean_abs_error']:.3f}")
    log(f"wrote {out} in {time.time() - started:.0f} s")
    return record


# ------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    defaults = RewardTrainConfig()
    parser = argparse.ArgumentParser(prog="python -m diffalign.shapes.reward", description="The shapes-reward model.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train shapes-reward on judged rendered and generated images")
    p.add_argument("--out", required=True, help="model folder to write (config.json + model.safetensors)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--rendered", type=int, default=defaults.rendered)
    p.add_argument("--generated", type=int, default=defaults.generated, help="images sampled per shipped model")
    p.add_argument("--held-out", type=int, default=defaults.held_out, help="held-out images per shipped model")
    p.add_argument("--data-cache", default=None, help="file of scored pairs: read if present, else written")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("steps", "rendered", "generated", "held_out", "threads"):
        if getattr(args, name) <= 0:
            print(f"diffalign shapes-reward: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    config = RewardTrainConfig(seed=args.seed, steps=args.steps, rendered=args.rendered, generated=args.generated,
                               held_out=args.held_out)
    try:
        train(config, args.out, args.data_cache)
    except UserError as err:
        print(f"diffalign shapes-reward: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
