"""Pretrain ``shapes-video`` (ShapesWorld in motion, a stock Wan 2.1 pipeline) from scratch, reproducibly.

    python -m diffalign.shapes.pretrain_video --out runs/shapes-video-pretrain

1. Renders ``--dataset-size`` clips of ShapesWorld in motion (9 frames, 32×32, every motion task drawn
   uniformly; :func:`diffalign.shapes.motion.make_video_sample`, so the data are fixed by the seed).
2. Trains the causal 3D autoencoder (:class:`~diffusers.AutoencoderKLWan`) on the clips with the image
   autoencoder's loss (L1 + MSE, object pixels weighted ``foreground_weight`` times the background, a tiny
   KL term), then stores the per-channel latent mean and std in its config (``latents_mean``/``latents_std``,
   which ``WanPipeline`` reads).
3. Trains the UMT5 text encoder and the Wan transformer jointly on the frozen autoencoder's normalised
   latents with rectified flow: ``x_sigma = (1 - sigma) x_0 + sigma eps``, logit-normal ``sigma``,
   ``L = ||(eps - x_0) - v_theta(x_sigma, 1000 sigma, c)||²``; 10% of captions replaced by ``""`` (the
   pipeline's negative prompt) so classifier-free guidance works. Text conditioning is the stock pipeline's
   own ``encode_prompt`` with ``max_sequence_length`` 32, what sampling feeds the transformer.
4. Writes the stock diffusers folder ``OUT/shapes-video`` (float16 storage, ``diffalign_defaults.json``).

Every stage checkpoints atomically every ``--checkpoint-every`` steps and when interrupted (Ctrl-C or
``kill``); ``--resume`` continues and ends with the weights of an uninterrupted run (same device and
threads). Ship the result with ``cp -r OUT/shapes-video assets/models/``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from . import motion
from . import video_model as V
from .models import folder_size, save_pipeline_folder
from .pretrain import PretrainStopped, Stage, _check_config, _interrupt_on_sigterm, _seed_for, autoencoder_loss, train_stage

_STAGES = ("video_autoencoder", "video")


@dataclass
class VideoPretrainConfig:
    """Everything that determines the result of a ``shapes-video`` pretraining run."""

    out: str
    sizes: V.VideoModelSizes = field(default_factory=lambda: V.DEFAULT_VIDEO_SIZES)
    seed: int = 0
    dataset_size: int = 8000
    autoencoder_batch_size: int = 8
    # measured: reconstructions of 200 unseen clips that pass the video judge, 15% after a 1000-step run, 43% after a
    # 2000-step one; in the 7000-step run 39% at step 1750, 66% at 2750, 94% at 5000, 97% at the end. No temporal
    # downsampling (9 latent frames, 8 channels) gave 21.5% after a 1000-step run, so the steps are what count.
    autoencoder_steps: int = 7000
    autoencoder_lr: float = 2e-3  # 3e-3 was still at the blank-background plateau (loss 0.42) after 540 steps; 2e-3 left it by 250
    kl_weight: float = 1e-6
    foreground_weight: float = 10.0
    batch_size: int = 32
    steps: int = 12000  # measured (full VideoShapesEval): 6000 steps 0.013 (dense 0.351), 12000 steps 0.235 (dense 0.604)
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    cond_dropout: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    float16_storage: bool = True
    device: str = "cpu"
    stop_after: int | None = None
    num_threads: int | None = 2  # the shipped model's run (two cores); a resumed run must use the same count to end bit-identical
    autoencoder_threads: int | None = None  # the autoencoder stage alone may use more threads (nothing runs beside it)

    def __post_init__(self):
        for name in ("dataset_size", "autoencoder_batch_size", "autoencoder_steps", "batch_size", "steps", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        motion.check_frames(self.sizes.frames)
        if (self.sizes.frames - 1) % 4:
            raise ValueError(f"frames must be 4k + 1 for Wan's causal autoencoder, got {self.sizes.frames}")

    def steps_of(self, stage: str) -> int:
        return self.autoencoder_steps if stage == "video_autoencoder" else self.steps

    def lr_of(self, stage: str) -> float:
        return self.autoencoder_lr if stage == "video_autoencoder" else self.lr

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["sizes"] = self.sizes.as_dict()
        return values


def make_video_data(config: VideoPretrainConfig) -> tuple[torch.Tensor, list[str]]:
    """The seeded training set: uint8 clips ``N×T×3×H×W`` and their captions."""
    clips = torch.empty(config.dataset_size, config.sizes.frames, 3, config.sizes.image_size, config.sizes.image_size, dtype=torch.uint8)
    captions = []
    for i in range(config.dataset_size):
        sample = motion.make_video_sample(i, seed=config.seed, frames=config.sizes.frames, size=config.sizes.image_size)
        clips[i] = (sample.video * 255).round().to(torch.uint8)
        captions.append(sample.caption)
    return clips, captions


def _to_vae(clips: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``B×T×C×H×W`` -> the autoencoder's ``B×C×T×H×W`` in [-1, 1]."""
    return clips.to(device=device, dtype=torch.float32).div(127.5).sub(1).permute(0, 2, 1, 3, 4)


class VideoAutoencoderStage(Stage):
    name = "video_autoencoder"

    def __init__(self, config: VideoPretrainConfig, device: torch.device, clips: torch.Tensor):
        super().__init__(config, device)
        torch.manual_seed(_seed_for(config, self.name, "init"))
        self.modules = {"vae": V.build_video_autoencoder(config.sizes).to(device)}
        self.clips = clips

    @property
    def folder(self) -> Path:
        return Path(self.config.out) / "video_autoencoder"

    def done_marker(self) -> Path:
        return self.folder / "config.json"

    def sample_batch(self, generator):
        index = torch.randint(len(self.clips), (self.config.autoencoder_batch_size,), generator=generator)
        return _to_vae(self.clips[index], self.device)

    def loss_on(self, x, generator):
        return autoencoder_loss(self.modules["vae"], x, generator, self.config.foreground_weight, self.config.kl_weight)

    @torch.no_grad()
    def export(self):
        vae = self.modules["vae"].eval()
        latents = torch.cat([vae.encode(_to_vae(chunk, self.device)).latent_dist.mode().cpu() for chunk in self.clips[:2048].split(64)])
        V.set_latent_stats(vae, latents)
        vae.save_pretrained(str(self.folder))


class VideoDenoiserStage(Stage):
    """UMT5 text encoder + Wan transformer, trained jointly on the frozen autoencoder's latents."""

    name = "video"

    def __init__(self, config: VideoPretrainConfig, device: torch.device, clips: torch.Tensor, captions: Sequence[str],
                 log: Callable[[str], None] = print):
        super().__init__(config, device)
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(str(Path(config.out) / "video_autoencoder")).to(device).eval().requires_grad_(False)
        tokenizer = V.build_t5_tokenizer()
        torch.manual_seed(_seed_for(config, self.name, "init"))
        text_encoder = V.build_video_text_encoder(config.sizes, len(tokenizer)).to(device)
        transformer = V.build_video_transformer(config.sizes).to(device)
        self.modules = {"text_encoder": text_encoder, "transformer": transformer}
        self.pipe = V.assemble_video_pipeline(vae, text_encoder, transformer, tokenizer)
        self.pipe.set_progress_bar_config(disable=True)
        started = time.time()
        with torch.no_grad():
            self.latents = torch.cat([
                V.normalise_latents(vae, vae.encode(_to_vae(chunk, device)).latent_dist.mode()).cpu() for chunk in clips.split(64)
            ])
        log(f"[video] encoded {len(self.latents)} clips to latents {tuple(self.latents.shape[1:])} in {time.time() - started:.0f} s")
        self.captions = list(captions)

    @property
    def folder(self) -> Path:
        return Path(self.config.out) / V.SHIPPED_NAME

    def done_marker(self) -> Path:
        return self.folder / "model_index.json"

    def sample_batch(self, generator):
        index = torch.randint(len(self.latents), (self.config.batch_size,), generator=generator)
        dropped = torch.rand(self.config.batch_size, generator=generator) < self.config.cond_dropout
        captions = ["" if drop else self.captions[i] for i, drop in zip(index.tolist(), dropped.tolist())]
        return self.latents[index].to(self.device), captions

    def loss_on(self, batch, generator):
        x0, captions = batch
        embeds, _ = self.pipe.encode_prompt(
            captions, do_classifier_free_guidance=False, max_sequence_length=V.TEXT_TOKENS, device=self.device
        )
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=generator)).to(self.device)  # logit-normal(0, 1)
        s = sigma.view(-1, 1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        prediction = self.modules["transformer"](
            hidden_states=x_t, timestep=sigma * self.pipe.scheduler.config.num_train_timesteps, encoder_hidden_states=embeds,
            return_dict=False,
        )[0]
        return F.mse_loss(prediction, noise - x0)

    def export(self):
        save_pipeline_folder(self.pipe, self.folder, V.video_defaults(self.config.sizes), float16=self.config.float16_storage)


def pretrain_video(config: VideoPretrainConfig, resume: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run (or finish) both stages; returns the ``shapes-video`` folder."""
    threads = torch.get_num_threads()
    device = torch.device(config.device)
    try:
        _check_config(config, resume)
        started = time.time()
        log(f"rendering {config.dataset_size} ShapesWorld-in-motion clips (seed {config.seed}, {config.sizes.frames} frames)")
        clips, captions = make_video_data(config)
        budget: list[int | None] = [config.stop_after]
        autoencoder = VideoAutoencoderStage(config, device, clips)
        if not autoencoder.done_marker().exists():
            torch.set_num_threads(config.autoencoder_threads or config.num_threads or threads)
            train_stage(autoencoder, config, resume=True, budget=budget, log=log)
        del autoencoder
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        stage = VideoDenoiserStage(config, device, clips, captions, log=log)
        if not stage.done_marker().exists():
            train_stage(stage, config, resume=True, budget=budget, log=log)
        log(f"[video] {stage.folder} ({folder_size(stage.folder) / 1e6:.1f} MB); done in {time.time() - started:.0f} s")
        return stage.folder
    finally:
        torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    defaults = VideoPretrainConfig(out="")
    parser = argparse.ArgumentParser(prog="python -m diffalign.shapes.pretrain_video",
                                     description="Pretrain shapes-video (ShapesWorld in motion, Wan 2.1 architecture) from scratch.")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, the autoencoder and the shapes-video folder")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="text encoder + transformer steps")
    parser.add_argument("--autoencoder-steps", type=int, default=defaults.autoencoder_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--dataset-size", type=int, default=defaults.dataset_size)
    parser.add_argument("--layers", type=int, default=defaults.sizes.layers, help="transformer blocks")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model sizes (smoke tests)")
    parser.add_argument("--stop-after", type=int, default=None, help="stop this invocation after N optimizer steps (resumable)")
    parser.add_argument("--threads", type=int, default=defaults.num_threads, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--autoencoder-threads", type=int, default=0, help="threads of the autoencoder stage (0: --threads)")
    return parser


def config_from_args(args: argparse.Namespace) -> VideoPretrainConfig:
    from dataclasses import replace

    sizes = V.TINY_VIDEO_SIZES if args.tiny else V.DEFAULT_VIDEO_SIZES
    if args.layers != V.DEFAULT_VIDEO_SIZES.layers:
        sizes = replace(sizes, layers=args.layers)
    return VideoPretrainConfig(
        out=args.out, sizes=sizes, seed=args.seed, dataset_size=args.dataset_size, batch_size=args.batch_size,
        autoencoder_steps=args.autoencoder_steps, steps=args.steps, lr=args.lr, checkpoint_every=args.checkpoint_every,
        device=args.device, stop_after=args.stop_after, num_threads=args.threads or None,
        autoencoder_threads=args.autoencoder_threads or None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if __name__ == "__main__":
        _interrupt_on_sigterm()
    try:
        pretrain_video(config_from_args(args), resume=args.resume)
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
