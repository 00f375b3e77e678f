"""Pretrain the ShapesWorld default models from scratch, reproducibly.

    python -m diffalign.shapes.pretrain --model all --out runs/shapes-pretrain

1. Generates ``--dataset-size`` ShapesWorld samples (seeded, :func:`diffalign.shapes.world.generate_dataset`).
2. Trains the autoencoder (L1 + MSE reconstruction with object pixels weighted ``foreground_weight``
   times the grey background, a tiny KL term) and sets ``scaling_factor``
   (and, for the flow model, ``shift_factor``) from the latent statistics of the data.
3. For each model: trains the CLIP text encoder and the denoiser jointly on the frozen
   autoencoder's latents, replacing 10% of captions by ``""`` (the pipelines' negative prompt) so
   classifier-free guidance works.

   * ``sd``: epsilon prediction under Stable Diffusion's betas, ``L = w(t) ||eps - eps_theta(x_t, t, c)||²``
     with Min-SNR-gamma weights ``w(t) = min(SNR(t), gamma) / SNR(t)``.
   * ``flow``: rectified flow, ``x_sigma = (1 - sigma) x_0 + sigma eps`` with logit-normal ``sigma``
     (SD3), ``L = ||(eps - x_0) - v_theta(x_sigma, 1000 sigma, c)||²``.

   Text conditioning is computed by the stock pipeline's own ``encode_prompt``, so training sees
   exactly what sampling feeds the denoiser.
4. Writes stock diffusers folders ``OUT/shapes-sd`` and ``OUT/shapes-flow`` (``save_pretrained``,
   float16 storage, ``diffalign_defaults.json``), loadable without diffalign.

Ship the result with ``cp -r OUT/shapes-sd OUT/shapes-flow assets/models/`` once ShapesEval puts
each model in the intended band (overall accuracy 0.25-0.75: good, with room for alignment).

With several models and enough cores, the denoiser stages run in parallel processes (same seeds and
data, so the same weights as ``--sequential``): about 70 minutes on a 2-core CPU for both models
(autoencoder 13 min, then shapes-sd 5000 steps ~30 min beside shapes-flow 8000 steps ~55 min).

Runs on one CPU thread per process by default (``--threads``): on a shared CPU, extra OpenMP threads mostly
spin (measured: 6x the CPU time for the same sampling work). ``--device cuda`` trains on a GPU.

Every stage writes an atomic checkpoint (``OUT/checkpoints/STAGE.pt``: weights, optimizer, step,
RNG state) every ``--checkpoint-every`` steps and when interrupted; ``--resume`` continues from it
and ends with the same weights as an uninterrupted run (same device and thread count).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from diffalign.errors import read_json

from . import models as M
from . import world

STAGES: tuple[str, ...] = ("autoencoder", *M.MODEL_KINDS)
CONFIG_FILE = "pretrain_config.json"
# fields that may differ between a run and its resumption
_RESUMABLE_CHANGES = {"device", "checkpoint_every", "stop_after", "models", "num_threads", "parallel", "autoencoder_threads"}


@dataclass
class PretrainConfig:
    """Everything that determines the result of a pretraining run."""

    out: str
    models: tuple[str, ...] = M.MODEL_KINDS
    sizes: M.ModelSizes = field(default_factory=lambda: M.DEFAULT_SIZES)
    seed: int = 0
    dataset_size: int = 20_000
    batch_size: int = 32
    autoencoder_steps: int = 2500
    autoencoder_lr: float = 2e-3
    kl_weight: float = 1e-6
    foreground_weight: float = 10.0  # objects cover ~10-30% of a scene; weigh their pixels up so they are learnt first
    steps: int = 5000  # shapes-sd (UNet) steps
    flow_steps: int = 8000  # shapes-flow (MMDiT): measured 0.18 ShapesEval after 5000 steps, blobby shapes
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    cond_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0  # Min-SNR-gamma loss weighting of the epsilon model (Hang et al. 2023)
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    float16_storage: bool = True
    device: str = "cpu"
    stop_after: int | None = None  # stop this invocation after so many optimizer steps (checkpointed)
    num_threads: int | None = 1  # one thread: on a busy CPU, more threads mostly spin (6x the CPU time here)
    parallel: bool = True  # train the denoisers of several models in parallel processes (CPU, >= 2 cores)

    def __post_init__(self):
        for kind in self.models:
            if kind not in M.MODEL_KINDS:
                raise ValueError(f"unknown model {kind!r}; expected one of {M.MODEL_KINDS} (or 'all' on the command line)")
        for name in ("dataset_size", "batch_size", "autoencoder_steps", "steps", "flow_steps", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")

    def steps_of(self, stage: str) -> int:
        return {"autoencoder": self.autoencoder_steps, "flow": self.flow_steps}.get(stage, self.steps)

    def lr_of(self, stage: str) -> float:
        return self.autoencoder_lr if stage == "autoencoder" else self.lr

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["sizes"] = self.sizes.as_dict()
        values["models"] = list(self.models)
        return values


class PretrainStopped(RuntimeError):
    """Raised when ``stop_after`` ends an invocation early; the checkpoint is on disk."""


# ------------------------------------------------------------------------------------------ data
def make_data(config: PretrainConfig, chunk: int = 1000) -> tuple[torch.Tensor, list[str]]:
    """The seeded training set: uint8 images ``N×3×H×W`` and their captions."""
    images, captions = [], []
    for start in range(0, config.dataset_size, chunk):
        samples = list(world.iter_dataset(min(chunk, config.dataset_size - start), seed=config.seed, size=config.sizes.image_size, start=start))
        images.append((torch.stack([s.image for s in samples]) * 255).round().to(torch.uint8))
        captions.extend(s.caption for s in samples)
    return torch.cat(images), captions


def _as_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device=device, dtype=torch.float32) / 255.0


def lr_at(step: int, base: float, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------------------- stages
class Stage:
    """One training stage: its modules, its loss on a batch, and what it writes when done."""

    name: str

    def __init__(self, config: PretrainConfig, device: torch.device):
        self.config, self.device = config, device
        self.modules: dict[str, torch.nn.Module] = {}

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]

    def sample_batch(self, generator: torch.Generator) -> Any:
        raise NotImplementedError

    def loss_on(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def export(self) -> None:
        raise NotImplementedError

    def done_marker(self) -> Path:
        raise NotImplementedError


#: seed slot of every stage of every pretraining run (the video model's stages follow the image ones)
_SEED_SLOTS: dict[str, int] = {name: i for i, name in enumerate((*STAGES, "video_autoencoder", "video"))}


def _seed_for(config: Any, stage: str, purpose: str) -> int:
    return config.seed * 1000 + _SEED_SLOTS[stage] * 10 + {"init": 0, "train": 1}[purpose]


def weighted_reconstruction(recon: torch.Tensor, x: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """L1 + MSE of ``recon`` against ``x`` (both in [-1, 1], channels on dim 1: images or ``B×C×T×H×W`` clips),
    pixels that differ from the grey background weighted ``foreground_weight`` times."""
    shape = (1, 3) + (1,) * (x.ndim - 2)
    background = torch.tensor(world.BACKGROUND, device=x.device).view(shape) / 127.5 - 1
    foreground = ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
    weight = 1 + (foreground_weight - 1) * foreground
    error = recon - x
    return (weight * (error.abs() + error.pow(2))).sum() / (weight.sum() * 3)


def autoencoder_loss(vae: torch.nn.Module, x: torch.Tensor, generator: torch.Generator, foreground_weight: float, kl_weight: float) -> torch.Tensor:
    """Both autoencoder stages' loss on ``x`` in [-1, 1] (images or ``B×C×T×H×W`` clips): the weighted reconstruction of
    a posterior sample plus ``kl_weight`` times the KL to N(0, I) per latent element."""
    posterior = vae.encode(x).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(x.device)
    recon = vae.decode(posterior.mean + posterior.std * noise).sample
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return weighted_reconstruction(recon, x, foreground_weight) + kl_weight * kl


class AutoencoderStage(Stage):
    name = "autoencoder"

    def __init__(self, config: PretrainConfig, device: torch.device, images: torch.Tensor):
        super().__init__(config, device)
        torch.manual_seed(_seed_for(config, self.name, "init"))
        self.modules = {"vae": M.build_autoencoder(config.sizes).to(device)}
        self.images = images

    @property
    def folder(self) -> Path:
        return Path(self.config.out) / "autoencoder"

    def done_marker(self) -> Path:
        return self.folder / "config.json"

    def sample_batch(self, generator):
        index = torch.randint(len(self.images), (self.config.batch_size,), generator=generator)
        return _as_float(self.images[index], self.device)

    def loss_on(self, images, generator):
        return autoencoder_loss(self.modules["vae"], images * 2 - 1, generator, self.config.foreground_weight, self.config.kl_weight)

    @torch.no_grad()
    def export(self):
        vae = self.modules["vae"].eval()
        latents = torch.cat([
            vae.encode(_as_float(chunk, self.device) * 2 - 1).latent_dist.mode().cpu()
            for chunk in self.images[: min(len(self.images), 4096)].split(512)
        ])
        mean, std = latents.mean().item(), latents.std().item()
        rms = latents.pow(2).mean().sqrt().item()
        vae.save_pretrained(str(self.folder))
        (self.folder / "latent_stats.json").write_text(json.dumps({"mean": mean, "std": std, "rms": rms}, indent=2) + "\n")


class DenoiserStage(Stage):
    """Text encoder + denoiser of one model kind, trained jointly on frozen-autoencoder latents."""

    def __init__(self, kind: str, config: PretrainConfig, device: torch.device, images: torch.Tensor, captions: Sequence[str]):
        super().__init__(config, device)
        from diffusers import AutoencoderKL

        self.name = kind
        folder = Path(config.out) / "autoencoder"
        vae = AutoencoderKL.from_pretrained(str(folder)).to(device).eval().requires_grad_(False)
        stats = json.loads((folder / "latent_stats.json").read_text())
        if kind == "flow":
            vae.register_to_config(scaling_factor=1.0 / stats["std"], shift_factor=stats["mean"])
        else:  # SD 1.x pipelines only scale
            vae.register_to_config(scaling_factor=1.0 / stats["rms"], shift_factor=None)
        torch.manual_seed(_seed_for(config, kind, "init"))
        text_encoder = M.build_text_encoder(config.sizes, with_projection=kind == "flow").to(device)
        denoiser = (M.build_unet if kind == "sd" else M.build_transformer)(config.sizes).to(device)
        self.modules = {"text_encoder": text_encoder, "denoiser": denoiser}
        self.pipe = M.assemble_pipeline(kind, vae, text_encoder, denoiser)
        self.pipe.set_progress_bar_config(disable=True)
        if kind == "flow":
            self.t5_tokens = M.flow_t5_length()
            denoiser.set_attn_processor(M.RepeatedTokenJointAttnProcessor(self.t5_tokens))
        with torch.no_grad():
            self.latents = torch.cat([
                M.image_to_latents(kind, vae, _as_float(chunk, device)).cpu() for chunk in images.split(512)
            ])
        self.captions = list(captions)

    @property
    def folder(self) -> Path:
        return Path(self.config.out) / M.SHIPPED_NAMES[self.name]

    def done_marker(self) -> Path:
        return self.folder / "model_index.json"

    def sample_batch(self, generator):
        index = torch.randint(len(self.latents), (self.config.batch_size,), generator=generator)
        dropped = torch.rand(self.config.batch_size, generator=generator) < self.config.cond_dropout
        captions = ["" if drop else self.captions[i] for i, drop in zip(index.tolist(), dropped.tolist())]
        return self.latents[index].to(self.device), captions

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        if self.name == "sd":
            embeds, _ = self.pipe.encode_prompt(captions, self.device, 1, do_classifier_free_guidance=False)
            return {"encoder_hidden_states": embeds}
        # one zero T5 token standing for the pipeline's max_sequence_length (RepeatedTokenJointAttnProcessor)
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            captions, None, None, device=self.device, do_classifier_free_guidance=False, max_sequence_length=1
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def loss_on(self, batch, generator):
        x0, captions = batch
        cond = self.encode(captions)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        denoiser = self.modules["denoiser"]
        if self.name == "sd":
            scheduler = self.pipe.scheduler
            t = torch.randint(scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator).to(self.device)
            x_t = scheduler.add_noise(x0, noise, t)
            prediction = denoiser(x_t, t, **cond).sample
            per_sample = (prediction - noise).pow(2).flatten(1).mean(dim=1)
            if self.config.min_snr_gamma:
                alpha_bar = scheduler.alphas_cumprod.to(self.device)[t]
                snr = alpha_bar / (1 - alpha_bar)
                per_sample = per_sample * snr.clamp(max=self.config.min_snr_gamma) / snr
            return per_sample.mean()
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=generator)).to(self.device)  # logit-normal(0, 1)
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        timestep = sigma * self.pipe.scheduler.config.num_train_timesteps
        prediction = denoiser(hidden_states=x_t, timestep=timestep, **cond).sample
        return F.mse_loss(prediction, noise - x0)

    def export(self):
        extra = {"max_sequence_length": self.t5_tokens} if self.name == "flow" else None
        M.save_pipeline(self.pipe, self.folder, self.name, self.config.sizes, float16=self.config.float16_storage, extra_defaults=extra)


# ----------------------------------------------------------------------------------- checkpoints
def checkpoint_path(config: PretrainConfig, stage: str) -> Path:
    return Path(config.out) / "checkpoints" / f"{stage}.pt"


def save_checkpoint(path: Path, stage: Stage, optimizer: torch.optim.Optimizer, step: int, generator: torch.Generator) -> None:
    """Write atomically (temp file + rename): a crash mid-write never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "modules": {name: {k: v.detach().cpu() for k, v in m.state_dict().items()} for name, m in stage.modules.items()},
        "optimizer": optimizer.state_dict(),
        "rng": generator.get_state(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, stage: Stage, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if set(state["modules"]) != set(stage.modules):
        raise ValueError(f"{path}: holds modules {sorted(state['modules'])}, stage {stage.name!r} has {sorted(stage.modules)}")
    for name, module in stage.modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["rng"])
    return int(state["step"])


# ----------------------------------------------------------------------------------------- loop
def train_stage(stage: Stage, config: PretrainConfig, resume: bool, budget: list[int | None], log: Callable[[str], None] = print) -> list[float]:
    """Run (or finish) ``stage``; returns the losses of the steps run in this call.

    ``budget`` is a one-element list with the steps this invocation may still run (None: no limit);
    when it reaches 0 a checkpoint is written and :class:`PretrainStopped` raised.
    """
    from tqdm.auto import tqdm

    total = config.steps_of(stage.name)
    optimizer = torch.optim.AdamW(stage.parameters(), lr=config.lr_of(stage.name), weight_decay=0.01)
    generator = torch.Generator().manual_seed(_seed_for(config, stage.name, "train"))
    path = checkpoint_path(config, stage.name)
    step = 0
    if path.exists():
        if not resume:
            raise FileExistsError(f"{path} exists: pass --resume to continue that run, or choose a new --out")
        step = load_checkpoint(path, stage, optimizer, generator)
        log(f"[{stage.name}] resumed at step {step}/{total}")
    for module in stage.modules.values():
        module.train()
    losses: list[float] = []
    bar = tqdm(total=total, initial=step, desc=stage.name, dynamic_ncols=True, mininterval=2.0)
    try:
        while step < total:
            if budget[0] is not None and budget[0] <= 0:
                save_checkpoint(path, stage, optimizer, step, generator)
                raise PretrainStopped(f"stopped at {stage.name} step {step} (checkpoint {path})")
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config.lr_of(stage.name), total, config.warmup_steps, config.min_lr_ratio)
            loss = stage.loss_on(stage.sample_batch(generator), generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(stage.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            if budget[0] is not None:
                budget[0] -= 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if step % config.checkpoint_every == 0 or step == total:
                save_checkpoint(path, stage, optimizer, step, generator)
    except KeyboardInterrupt:
        save_checkpoint(path, stage, optimizer, step, generator)
        log(f"\n[{stage.name}] interrupted at step {step}; checkpoint written, continue with --resume")
        raise
    finally:
        bar.close()
    for module in stage.modules.values():
        module.eval()
    stage.export()
    return losses


def _check_config(config: PretrainConfig, resume: bool) -> None:
    out = Path(config.out)
    path = out / CONFIG_FILE
    current = json.loads(json.dumps(config.as_dict()))  # tuples -> lists, as read back
    if path.exists():
        previous = read_json(path, "the pretraining run's settings")
        changed = sorted(k for k in set(previous) | set(current) if k not in _RESUMABLE_CHANGES and previous.get(k) != current.get(k))
        if not resume:
            raise FileExistsError(f"{out} already holds a pretraining run: pass --resume to continue it, or choose a new --out")
        if changed:
            raise ValueError(f"--resume with settings that differ from the run in {out}: {changed}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # parallel model processes write it too
    tmp.write_text(json.dumps(current, indent=2) + "\n")
    os.replace(tmp, path)


def pretrain(config: PretrainConfig, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Run every stage the requested models need; returns ``{kind: pipeline folder}``.

    Stages already exported are skipped (so ``--model flow`` after ``--model sd`` reuses the autoencoder).
    """
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _run_stages(config, resume, log)
    finally:
        torch.set_num_threads(threads)


def _run_stages(config: PretrainConfig, resume: bool, log: Callable[[str], None]) -> dict[str, Path]:
    device = torch.device(config.device)
    _check_config(config, resume)
    started = time.time()
    log(f"generating {config.dataset_size} ShapesWorld samples (seed {config.seed})")
    images, captions = make_data(config)
    budget: list[int | None] = [config.stop_after]
    ae = AutoencoderStage(config, device, images)
    if not ae.done_marker().exists():
        train_stage(ae, config, resume=True, budget=budget, log=log)
    del ae
    folders = {kind: Path(config.out) / M.SHIPPED_NAMES[kind] for kind in config.models}
    pending = [kind for kind in config.models if not (folders[kind] / "model_index.json").exists()]
    if _parallel_ok(config, pending):
        del images, captions
        _train_in_processes(config, pending, log)
    else:
        for kind in pending:
            train_stage(DenoiserStage(kind, config, device, images, captions), config, resume=True, budget=budget, log=log)
    for kind, folder in folders.items():
        log(f"[{kind}] {folder} ({M.folder_size(folder) / 1e6:.1f} MB)")
    log(f"done in {time.time() - started:.0f} s")
    return folders


def _parallel_ok(config: PretrainConfig, pending: Sequence[str]) -> bool:
    threads = config.num_threads or torch.get_num_threads()
    return (config.parallel and len(pending) > 1 and config.stop_after is None and config.device == "cpu"
            and (os.cpu_count() or 1) >= len(pending) * threads)


def _denoiser_worker(config: PretrainConfig) -> None:
    _interrupt_on_sigterm()
    pretrain(config, resume=True)


def _train_in_processes(config: PretrainConfig, kinds: Sequence[str], log: Callable[[str], None]) -> None:
    """One process per model (same seeds and data as the sequential run, so the same weights)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_denoiser_worker, args=(replace(config, models=(kind,)),), name=f"pretrain-{kind}")
                 for kind in kinds]
    log(f"training {', '.join(kinds)} in parallel processes")
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()  # SIGTERM: each writes its checkpoint
        for process in processes:
            process.join()
        raise
    failed = [process.name for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"{', '.join(failed)} failed (see above); rerun with --resume to continue from the checkpoints")


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    defaults = PretrainConfig(out="")
    parser = argparse.ArgumentParser(
        prog="python -m diffalign.shapes.pretrain",
        description="Pretrain the ShapesWorld default models (shapes-sd, shapes-flow) from scratch.",
    )
    parser.add_argument("--model", choices=[*M.MODEL_KINDS, "all"], default="all")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, the autoencoder, and the pipeline folders")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="text encoder + UNet steps of shapes-sd")
    parser.add_argument("--flow-steps", type=int, default=defaults.flow_steps, help="text encoder + MMDiT steps of shapes-flow")
    parser.add_argument("--autoencoder-steps", type=int, default=defaults.autoencoder_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--dataset-size", type=int, default=defaults.dataset_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model sizes (smoke tests)")
    parser.add_argument("--stop-after", type=int, default=None, help="stop this invocation after N optimizer steps (resumable)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--sequential", action="store_true", help="train the models one after the other (default: in parallel processes when the CPU has the cores)")
    return parser


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(
        out=args.out,
        models=M.MODEL_KINDS if args.model == "all" else (args.model,),
        sizes=M.TINY_SIZES if args.tiny else M.DEFAULT_SIZES,
        seed=args.seed,
        dataset_size=args.dataset_size,
        batch_size=args.batch_size,
        autoencoder_steps=args.autoencoder_steps,
        steps=args.steps,
        flow_steps=args.flow_steps,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        stop_after=args.stop_after,
        num_threads=args.threads or None,
        parallel=not args.sequential,
    )


def _interrupt_on_sigterm() -> None:
    """``kill PID`` checkpoints like Ctrl-C (background jobs ignore SIGINT)."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if __name__ == "__main__":
        _interrupt_on_sigterm()
    try:
        config = config_from_args(args)
        pretrain(config, resume=args.resume)
    except PretrainStopped as stop:
        print(stop)
        return 0
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
