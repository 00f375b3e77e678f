"""The one training loop, on ``accelerate``, for every algorithm and data source.

Each epoch:

1. **Collection** — the algorithm's ``collect(epoch)`` gives this process's batch: online rollouts with
   rewards and advantages (:mod:`diffalign.training.online`, the default) or preference examples read from
   a dataset. Any batch that can be indexed, concatenated and moved will do; the algorithm says how many
   examples an epoch holds (``samples_per_epoch``).
2. **Training** — ``train.inner_epochs`` passes over the shuffled batch in train batches; the algorithm
   splits each into micro-steps and gives their losses. Gradients accumulate over
   ``(samples / train batch) x micro-steps / updates`` backward passes (derived, printed, checked for
   divisibility), are averaged over processes, clipped, and one optimizer step is taken. The optimizer
   trains the algorithm's parameter groups (each may have its own learning rate). A non-finite loss or
   gradient skips the step (grads zeroed, logged); ``run.max_bad_steps`` consecutive skips stop training
   with :class:`TrainingDivergedError`, leaving the last good checkpoint untouched.
3. **Evaluation** — held-out prompts sampled through the algorithm (``evaluation_rollout``) with fixed
   noise, scored by the reward.

Gradients are averaged across processes explicitly rather than by wrapping the denoiser in DDP:
the adapter calls its own denoiser module, and a DDP wrapper that is not the module used in the
forward pass silently skips the all-reduce (the LoRA gradient-sync bug of the original DDPO code).

The run folder holds ``config.toml``, ``metrics.jsonl``, ``checkpoints/`` (weights, optimizer, the
adapter's named snapshots, the algorithm's state such as a data position), sample grids (``samples/``;
video: an MP4 of the grid and a PNG strip of frames), ``reward_curve.png`` (:mod:`diffalign.training.report`)
and the final weights (``final/``: a diffusers LoRA or the trainable state).

From Python::

    trainer = AWMTrainer("awm_shapes", overrides=["run.epochs=20"])
    trainer.train()
    print(trainer.evaluate()["eval/reward_mean"])
"""
from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from diffalign.config import Config, ConfigError, load_config, to_toml
from diffalign.errors import MissingPathError

from .advantages import build_normalizer
from .algorithms import ALGORITHMS, Algorithm
from .algorithms.base import ParamGroup
from .checkpoint import capture_rng_state, find_latest_checkpoint, load_state, restore_rng_state, write_checkpoint
from .prompts import GroupPromptSampler, ListSource, check_group_size, derive_seed, prompt_source

logger = logging.getLogger(__name__)

__all__ = ["AWMTrainer", "DDPOTrainer", "FlowGRPOTrainer", "Trainer", "TrainingDivergedError", "recipe_path"]

Reward = Callable[[torch.Tensor, list[str]], torch.Tensor]


class TrainingDivergedError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


def recipe_path(recipe: str | Path) -> Path:
    """A recipe file: an existing path, or the bare name of a shipped recipe (``awm_shapes``)."""
    path = Path(recipe)
    if path.exists():
        return path
    name = path.name if path.suffix == ".toml" else f"{path.name}.toml"
    shipped = importlib.resources.files("diffalign.training") / "recipes" / name
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"recipe {recipe!r} is neither a file nor a shipped recipe; shipped: {', '.join(shipped_recipes())}")


def shipped_recipes() -> list[str]:
    folder = importlib.resources.files("diffalign.training") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _available_trackers(names: Sequence[str]) -> list[str]:
    modules = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}
    out = []
    for name in names:
        candidates = modules.get(name, (name,))
        if any(importlib.util.find_spec(m) is not None for m in candidates):
            out.append(name)
        else:
            logger.warning("tracker %r is not installed; skipping it (metrics.jsonl is still written)", name)
    return out


class Trainer:
    """The training loop; the algorithm is ``config.run.algorithm`` (or fixed by a subclass)."""

    algorithm_name: ClassVar[str | None] = None

    def __init__(
        self,
        config: Config | str | Path | dict | None = None,
        *,
        overrides: Sequence[str] | dict[str, Any] = (),
        adapter=None,
        reward: Reward | str | None = None,
        train_prompts: Sequence[str] | None = None,
        eval_prompts: Sequence[str] | None = None,
        run_dir: str | Path | None = None,
    ):
        if isinstance(config, (str, Path)) and not Path(config).exists():
            config = recipe_path(config)
        self.recipe = Path(config) if isinstance(config, (str, Path)) else None  # provenance for the model card
        overrides = dict(overrides) if isinstance(overrides, dict) else list(overrides)
        self.config = load_config(config, overrides)
        chosen = self.config.run.algorithm
        if self.algorithm_name is not None and chosen != self.algorithm_name:
            if chosen:
                raise ConfigError(
                    f"run.algorithm = {chosen!r}, but {type(self).__name__} trains {self.algorithm_name!r}: "
                    f"use Trainer for this recipe or change run.algorithm"
                )
            extra = {"run.algorithm": self.algorithm_name}
            self.config = load_config(self.config, extra)
        run = self.config.run
        if not run.algorithm:
            raise ConfigError(f"run.algorithm is not set; choose one of: {', '.join(ALGORITHMS.names())}")
        if run.algorithm not in ALGORITHMS:
            raise ConfigError(f"run.algorithm = {run.algorithm!r} is unknown; known: {', '.join(ALGORITHMS.names())}")
        self.algorithm: Algorithm = ALGORITHMS.get(run.algorithm)(self.config)
        expected_mode = self.algorithm.default_advantage_mode
        if expected_mode is not None and self.config.advantage.mode != expected_mode:
            logger.warning("advantage.mode = %r; %s normally uses %r", self.config.advantage.mode, run.algorithm, expected_mode)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(run.output_dir) / run.name
        self.grad_accum = self._derive_accumulation()
        self._check_sources(adapter, reward, train_prompts)  # bad names and paths fail before anything loads

        from accelerate import Accelerator

        self.accelerator = Accelerator(
            mixed_precision=run.mixed_precision,
            # without an accelerator, cpu=True is what lets accelerate form a multi-process (gloo) group
            cpu=run.cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available()),
            gradient_accumulation_steps=self.grad_accum,
            log_with=_available_trackers(run.log_with) or None,
            project_dir=str(self.run_dir),
            step_scheduler_with_optimizer=False,
        )
        acc = self.accelerator
        check_group_size(self.config.sampling.batch_size, self.config.sampling.group_size, acc.num_processes)
        self._print(
            f"gradient accumulation: {self.grad_accum} backward passes per optimizer step "
            f"({self.samples_per_epoch} samples/process/epoch, train batch {self.config.train.batch_size}, "
            f"{self.algorithm.micro_steps_per_batch()} micro-steps per batch, "
            f"{self.algorithm.updates_per_pass()} update(s) per pass, {acc.num_processes} process(es))"
        )

        # model: shared init seed on every rank, so LoRA initial weights agree
        torch.manual_seed(derive_seed(run.seed, "init"))
        self.adapter = self._load_adapter(adapter)
        self.algorithm.setup_trainable(self.adapter)
        self.algorithm.setup(self)
        self.param_groups: list[ParamGroup] = [g for g in self.algorithm.parameter_groups() if g.params]
        if not self.param_groups:
            raise ConfigError(f"nothing to train: {run.algorithm} gave no trainable parameters")
        self.param_names = [n if g.name == "denoiser" else f"{g.name}/{n}" for g in self.param_groups for n in g.params]
        self.params = [p for g in self.param_groups for p in g.params.values()]
        self._build_optimizer()
        self.ema = None
        if self.config.train.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=self.config.train.ema_decay)
        # per-process randomness from here on (dropout etc.); sampling noise uses per-sample generators
        from accelerate.utils import set_seed

        set_seed(run.seed, device_specific=True)

        self.reward = self._load_reward(reward)
        # what the logs and summary.json call the proxy: the spec, or the given callable's name
        self.reward_name = (self.config.reward.spec if reward is None else reward if isinstance(reward, str)
                            else getattr(reward, "name", getattr(reward, "__name__", type(reward).__name__)))
        self.gold = self._load_reward(self.config.eval.gold, self.config.eval.gold_options) if self.config.eval.gold else None
        self._train_source = (ListSource(train_prompts, "train") if train_prompts
                              else prompt_source(self.config.prompts.train, self.config.prompts.train_list,
                                                 self.config.prompts.options))
        self.eval_prompts = self._eval_prompts(eval_prompts)
        self.prompt_sampler = GroupPromptSampler(
            self._train_source, self.config.sampling.batch_size, self.config.sampling.group_size,
            acc.num_processes, acc.process_index, seed=run.seed,
        )
        adv = self.config.advantage
        self.normalizer = build_normalizer(adv.mode, adv.buffer_size, adv.min_count, adv.global_std)

        self.epoch = 0
        self.global_step = 0
        self.consecutive_bad_steps = 0
        self.history: list[dict[str, Any]] = []
        self.reward_hacking: list[dict[str, Any]] = []  # onsets (diffalign.training.gold), also in summary.json
        self._trackers_started = False

    # ------------------------------------------------------------------------------- setup
    @property
    def samples_per_epoch(self) -> int:
        return self.algorithm.samples_per_epoch()

    def _derive_accumulation(self) -> int:
        t = self.config.train
        n = self.samples_per_epoch
        if n % t.batch_size:
            raise ConfigError(
                f"train.batch_size = {t.batch_size} must divide the {n} samples per process and epoch of "
                f"{self.config.run.algorithm} ({self.algorithm.samples_per_epoch_source()})"
            )
        batches = n // t.batch_size
        updates = self.algorithm.updates_per_pass()
        if batches % updates:
            raise ConfigError(
                f"train.updates_per_epoch = {updates} must divide the {batches} train batches per epoch "
                f"({n} samples / train.batch_size {t.batch_size})"
            )
        return batches // updates * self.algorithm.micro_steps_per_batch()

    def _check_sources(self, adapter, reward, train_prompts) -> None:
        """The model, reward and prompt sources exist (UserError otherwise), checked before any model loads."""
        from diffalign.errors import model_source, scorer_spec

        if adapter is None:
            model_source(self.config.model.source, option="model.source")
        if reward is None or isinstance(reward, str):
            scorer_spec(reward or self.config.reward.spec, self.config.reward.options, what="reward.spec scorer")
        self.algorithm.check_reward(self.config.reward.spec if reward is None else reward)
        if not train_prompts:
            prompt_source(self.config.prompts.train, self.config.prompts.train_list, self.config.prompts.options)
        if self.config.eval.gold:
            scorer_spec(self.config.eval.gold, self.config.eval.gold_options, what="eval.gold scorer")

    def _load_adapter(self, adapter):
        from diffalign.pipelines import load

        dtype = getattr(torch, self.config.model.dtype)
        if adapter is None:
            adapter = load(self.config.model.source, device=self.accelerator.device,
                           torch_dtype=dtype if dtype != torch.float32 else None)
        else:
            adapter = load(adapter)
            adapter.to(self.accelerator.device)
        if self.config.model.gradient_checkpointing:
            adapter.configure_memory(gradient_checkpointing=True)
        return adapter

    def _build_optimizer(self) -> None:
        from diffusers.optimization import get_scheduler

        t = self.config.train
        groups = [{"params": list(g.params.values()), "lr": g.learning_rate or t.learning_rate, **g.options}
                  for g in self.param_groups]
        optimizer = torch.optim.AdamW(
            groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
            weight_decay=t.weight_decay, eps=t.adam_epsilon,
        )
        total_steps = self.config.run.epochs * t.inner_epochs * self.algorithm.updates_per_pass()
        scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.lr_warmup_steps,
                                  num_training_steps=total_steps)
        self.optimizer, self.lr_scheduler = self.accelerator.prepare(optimizer, scheduler)

    def _load_reward(self, reward, options: dict[str, Any] | None = None) -> Reward:
        if reward is None:
            reward = self.config.reward.spec
        if isinstance(reward, str):
            from diffalign import scorers

            reward = scorers.load(reward, **(self.config.reward.options if options is None else options))
        if isinstance(reward, torch.nn.Module):
            reward = reward.to(self.accelerator.device).eval()
        if not callable(reward):
            raise ConfigError(f"reward must be a scorer spec or a callable (media, prompts) -> Tensor[B], got {reward!r}")
        return reward

    def _eval_prompts(self, given: Sequence[str] | None) -> list[str]:
        p = self.config.prompts
        if given:
            return list(given)
        if p.eval_list:
            return list(p.eval_list)[: p.num_eval]
        if p.eval:
            source = prompt_source(p.eval, (), p.options)
            return source.first(p.num_eval) if isinstance(source, ListSource) else source.draw(p.num_eval, self.config.eval.seed)
        # drawn from eval.seed, not run.seed: runs with different seeds are scored on the same prompts
        return self._train_source.draw(p.num_eval, derive_seed(self.config.eval.seed, "eval-prompts"))

    # ------------------------------------------------------------------------------ helpers
    def _print(self, message: str) -> None:
        self.accelerator.print(message) if hasattr(self, "accelerator") else print(message)
        logger.debug(message)  # already printed; INFO would show it twice under the CLI's logging

    def _generators(self, *tags: Any, indices: Sequence[int]) -> list[torch.Generator]:
        seed = self.config.run.seed
        return [torch.Generator("cpu").manual_seed(derive_seed(seed, *tags, int(i))) for i in indices]

    def score(self, media: torch.Tensor, prompts: list[str], scorer: Reward | None = None) -> torch.Tensor:
        """Scores of ``media`` by the reward (or by ``scorer``, e.g. the gold one), without gradient."""
        with torch.no_grad():
            rewards = (scorer or self.reward)(media, list(prompts))
        rewards = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1)
        if rewards.shape[0] != len(prompts):
            raise ValueError(f"reward returned {rewards.shape[0]} values for {len(prompts)} samples")
        return rewards.to(self.accelerator.device)

    def _is_main(self) -> bool:
        return self.accelerator.is_main_process

    @contextlib.contextmanager
    def ema_weights(self):
        """Inside, the trainable parameters hold their EMA (no-op without ``train.ema``)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    # -------------------------------------------------------------------------- collection
    def collect(self, epoch: int):
        """This process's batch for ``epoch``, as the algorithm collects it."""
        return self.algorithm.collect(epoch)

    def _bar(self, iterable, desc: str):
        if not self.config.run.progress or not self._is_main():
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, leave=False)

    # ---------------------------------------------------------------------------- training
    def _sync_gradients(self) -> None:
        """Average gradients over processes (see the module docstring for why not DDP)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
        flat = acc.reduce(flat, reduction="mean")
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def _optimizer_step(self, window_bad: bool) -> dict[str, float]:
        acc = self.accelerator
        self._sync_gradients()
        bad = torch.tensor(float(window_bad), device=acc.device)
        if acc.num_processes > 1:
            bad = acc.reduce(bad, reduction="sum")
        grads_finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in self.params)
        if bad.item() > 0 or not grads_finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.consecutive_bad_steps += 1
            logger.warning("non-finite loss or gradient: optimizer step skipped (%d in a row)", self.consecutive_bad_steps)
            if self.consecutive_bad_steps >= self.config.run.max_bad_steps:
                last = find_latest_checkpoint(self.run_dir)
                raise TrainingDivergedError(
                    f"{self.consecutive_bad_steps} consecutive optimizer steps had a non-finite loss or gradient "
                    f"(epoch {self.epoch}); training stopped. Last good checkpoint: {last or 'none written yet'}"
                )
            return {"skipped_steps": 1.0}
        grad_norm = acc.clip_grad_norm_(self.params, self.config.train.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.consecutive_bad_steps = 0
        if self.ema is not None and self.global_step % self.config.train.ema_every == 0:
            self.ema.step(self.params)
        self.algorithm.after_update(self.global_step)
        return {"grad_norm": float(grad_norm), "skipped_steps": 0.0}

    def train_on(self, batch, epoch: int) -> dict[str, float]:
        """The training phase of one epoch."""
        acc = self.accelerator
        t = self.config.train
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def record(values: dict[str, Any]) -> None:
            for k, v in values.items():
                v = float(v)
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1

        batch, train_batch_size, selected = self.algorithm.select_for_training(batch, epoch)
        record(selected)
        modules = [g.module for g in self.param_groups if g.module is not None]
        for module in modules:
            module.train()
        window_bad = False
        for inner in range(t.inner_epochs):
            order = torch.randperm(batch.batch_size, generator=torch.Generator().manual_seed(
                derive_seed(self.config.run.seed, "shuffle", epoch, inner, acc.process_index)))
            shuffled = batch[order]
            starts = range(0, batch.batch_size, train_batch_size)
            for start in self._bar(starts, f"epoch {epoch}: training"):
                train_batch = shuffled[start : start + train_batch_size]
                for micro in self.algorithm.micro_batches(train_batch, epoch, inner):
                    with acc.accumulate(*modules):
                        with acc.autocast():
                            loss, stats = self.algorithm.loss(micro)
                        if torch.isfinite(loss):
                            acc.backward(loss)
                        else:
                            window_bad = True
                        record({"loss": loss.detach(), **stats})
                        if acc.sync_gradients:
                            record(self._optimizer_step(window_bad))
                            window_bad = False
        for module in modules:
            module.eval()
        return {k: sums[k] / counts[k] for k in sums}

    # ------------------------------------------------------------------------------- epochs
    def _start_trackers(self) -> None:
        if self._trackers_started:
            return
        self._trackers_started = True
        if self._is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(to_toml(self.config))
        if self.accelerator.log_with:
            self.accelerator.init_trackers(self.config.run.name, config=self.config.flat())

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self._is_main():
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.accelerator.log_with:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("epoch",)}
            self.accelerator.log(scalars, step=record.get("epoch", self.epoch))

    def train(self, epochs: int | None = None, *, stop_after: int | None = None,
              budget: str | None = None) -> dict[str, Any]:
        """Train up to ``epochs`` (default ``run.epochs``) total epochs; ``stop_after`` ends this call early
        after that many epochs (as if interrupted; resume continues). ``budget``: what the per-epoch line shows
        in place of the epoch total, for a caller that stops on something else (e.g. minutes of CPU time).
        Returns the last metrics."""
        run = self.config.run
        total = run.epochs if epochs is None else epochs
        self._start_trackers()
        if self.epoch == 0 and self.config.eval.at_start and not any("eval/reward_mean" in h for h in self.history):
            self.evaluate()
        done = 0
        last: dict[str, Any] = {}
        for epoch in range(self.epoch, total):
            started = time.time()
            batch = self.collect(epoch)
            collected = self.algorithm.epoch_stats(batch)
            metrics = self.train_on(batch, epoch)
            self.algorithm.after_epoch(epoch, self.global_step)
            self.epoch = epoch + 1
            last = {
                "epoch": self.epoch, "global_step": self.global_step, **collected,
                "lr": float(self.lr_scheduler.get_last_lr()[0]), "seconds": time.time() - started, **metrics,
            }
            self._log(last)
            shown = f"reward {last['reward_mean']:.4f} " if "reward_mean" in last else ""
            of = f" ({budget})" if budget else f"/{total}"
            self._print(f"epoch {self.epoch}{of}: {shown}loss {metrics.get('loss', float('nan')):.4g}")
            every = self.config.eval.every
            if (every and self.epoch % every == 0) or self.epoch == total:
                self.evaluate()
            if (run.checkpoint_every and self.epoch % run.checkpoint_every == 0) or self.epoch == total:
                self.save_checkpoint()
            done += 1
            if stop_after is not None and done >= stop_after and self.epoch < total:
                return last
        if self.epoch >= total:
            self.save_final()
        return last

    # --------------------------------------------------------------------------- evaluation
    def evaluate(self, prompts: Sequence[str] | None = None, *, save_grid: bool = True) -> dict[str, Any]:
        """Mean reward on the held-out prompts with the deterministic (or ``eval``) sampler and fixed noise,
        using the EMA weights when ``eval.use_ema``. Logs ``eval/reward_mean`` and ``eval/reward_std``; the
        returned dict also holds ``eval/rewards``, one reward per prompt in prompt order (for paired tests).

        With ``eval.gold``, the same samples are scored by the gold scorer too (``eval/gold_mean``,
        ``eval/gold_std``, ``eval/golds``), and on the run's held-out prompts the reward-hacking check
        (:mod:`diffalign.training.gold`) runs: ``eval/reward_hacking`` is 1.0 while it holds, and each onset
        warns once and is recorded in ``summary.json``."""
        e = self.config.eval
        acc = self.accelerator
        held_out = prompts is None
        prompts = list(prompts or self.eval_prompts)
        mine = list(range(acc.process_index, len(prompts), acc.num_processes))
        rewards, golds, media = [], [], []
        context = self.ema_weights() if e.use_ema else contextlib.nullcontext()
        with context, torch.no_grad(), acc.autocast():
            for start in range(0, len(mine), e.batch_size):
                idx = mine[start : start + e.batch_size]
                batch_prompts = [prompts[i] for i in idx]
                rollout = self.algorithm.evaluation_rollout(
                    batch_prompts, [torch.Generator("cpu").manual_seed(derive_seed(e.seed, "eval", i)) for i in idx])
                rewards.append(self.score(rollout.media, batch_prompts).cpu())
                if self.gold is not None:
                    golds.append(self.score(rollout.media, batch_prompts, self.gold).cpu())
                kept = sum(m.shape[0] for m in media)
                if kept < e.grid_images:  # only what the grid shows: a held-out set of videos is large
                    media.append(rollout.media[: e.grid_images - kept].float().cpu())
        flat_golds = torch.cat(golds).tolist() if golds else [float("nan")] * len(mine)
        local = list(zip(mine, torch.cat(rewards).tolist() if rewards else [], flat_golds))
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            local = gather_object(local)
        ordered = sorted(local)
        values = torch.tensor([r for _, r, _ in ordered])
        result = {"epoch": self.epoch, "global_step": self.global_step,
                  "eval/reward_mean": float(values.mean()), "eval/reward_std": float(values.std(unbiased=False))}
        gold_values = None
        if self.gold is not None:
            gold_values = torch.tensor([g for _, _, g in ordered])
            result.update({"eval/gold_mean": float(gold_values.mean()), "eval/gold_std": float(gold_values.std(unbiased=False))})
        if self._trackers_started:
            if self.gold is not None and held_out:
                self._check_reward_hacking(result)
            self._log(result)
            if self._is_main():
                if save_grid and media and e.grid_images:
                    self._save_eval_grid(torch.cat(media)[: e.grid_images])
                self.plot_rewards()
                self.write_summary()
        extra = {"eval/golds": gold_values.tolist()} if gold_values is not None else {}
        result = {**result, "eval/rewards": values.tolist(), **extra}
        self.algorithm.after_evaluation(result)
        return result

    def _save_eval_grid(self, media: torch.Tensor) -> Path:
        """``samples/eval_epoch_N.png``: the image grid, or for video an MP4 of the grid and a PNG strip of
        frames (one row per video)."""
        from diffalign.media import save_frame_strip, save_grid, save_video_grid

        stem = self.run_dir / "samples" / f"eval_epoch_{self.epoch:04d}"
        if media.ndim == 5:
            fps = self.config.eval.fps or self.config.sampling.fps
            save_video_grid(media, stem.with_suffix(".mp4"), fps=fps)
            return save_frame_strip(media, stem.with_suffix(".png"), max_frames=16)
        return save_grid(media, stem.with_suffix(".png"))

    def _check_reward_hacking(self, result: dict[str, Any]) -> None:
        """Set ``eval/reward_hacking`` on ``result``; at an onset, warn once and record it in ``summary.json``."""
        from .gold import HACKING_KEY, hacking_alarm

        e = self.config.eval
        holds, alarm = hacking_alarm([*self.history, result], e.hacking_window, e.hacking_tolerance)
        result[HACKING_KEY] = float(holds)
        if alarm is None:
            return
        message = alarm.message(self.reward_name, e.gold)
        logger.warning(message)
        self._print(f"WARNING: {message}")
        self.reward_hacking.append({**alarm.as_dict(), "message": message})

    def write_summary(self) -> Path | None:
        """``summary.json``: the proxy and gold scorers, the last held-out means and every reward-hacking onset."""
        if not self._is_main():
            return None
        evaluations = [h for h in self.history if "eval/reward_mean" in h]
        last = evaluations[-1] if evaluations else {}
        summary = {
            "algorithm": self.config.run.algorithm, "proxy": self.reward_name, "gold": self.config.eval.gold or None,
            "epoch": self.epoch, "last_evaluation": {k: v for k, v in last.items() if k.startswith("eval/")},
            "reward_hacking": self.reward_hacking,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        return path

    def plot_rewards(self) -> Path | None:
        """``reward_curve.png``: training reward per epoch and held-out reward per evaluation."""
        from .report import plot_reward_curve

        return plot_reward_curve(self.history, self.run_dir / "reward_curve.png",
                                 title=f"{self.config.run.algorithm}: {self.config.run.name}")

    # --------------------------------------------------------------------------- checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in zip(self.param_names, self.params)}

    def save_checkpoint(self) -> Path:
        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "consecutive_bad_steps": self.consecutive_bad_steps,
            "prompt_sampler": self.prompt_sampler.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "accelerator_step": self.accelerator.step,
            "history": self.history,
            "reward_hacking": self.reward_hacking,
            "algorithm": self.config.run.algorithm,
        }
        path = write_checkpoint(
            self.run_dir / "checkpoints", self.epoch,
            weights=self.trainable_state_dict(),
            states={
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.lr_scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "algorithm": self.algorithm.state_dict() or None,
                "snapshots": self.adapter.snapshots_state() or None,
            },
            trainer_state=state,
            rng_state=capture_rng_state(),
            keep_last=self.config.run.keep_checkpoints,
            accelerator=self.accelerator,
        )
        return path

    def resume(self, checkpoint: str | Path | None = None) -> Path:
        """Restore everything from ``checkpoint`` (a checkpoint folder or a run folder: its newest)."""
        found = find_latest_checkpoint(checkpoint or self.run_dir)
        if found is None:
            raise MissingPathError(f"no complete checkpoint under {checkpoint or self.run_dir}")
        data = load_state(found, rank=self.accelerator.process_index)
        state = data["trainer_state"]
        if state.get("algorithm") not in (None, self.config.run.algorithm):
            raise ConfigError(f"checkpoint {found} was written by {state['algorithm']!r}, not {self.config.run.algorithm!r}")
        weights = data["weights"]
        missing = [n for n in self.param_names if n not in weights]
        if missing:
            raise ConfigError(f"checkpoint {found} lacks trainable parameters, e.g. {missing[:3]}")
        with torch.no_grad():
            for name, param in zip(self.param_names, self.params):
                param.copy_(weights[name])
        self.optimizer.load_state_dict(data["optimizer"])
        self.lr_scheduler.load_state_dict(data["scheduler"])
        if self.ema is not None and data.get("ema") is not None:
            self.ema.load_state_dict(data["ema"])
        if data.get("snapshots"):
            self.adapter.load_snapshots_state(data["snapshots"])
        if data.get("algorithm"):
            self.algorithm.load_state_dict(data["algorithm"])
        self.prompt_sampler.load_state_dict(state["prompt_sampler"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.consecutive_bad_steps = state["consecutive_bad_steps"]
        self.accelerator.step = state.get("accelerator_step", 0)
        self.history = list(state.get("history", []))
        self.reward_hacking = list(state.get("reward_hacking", []))
        if "rng" in data:
            restore_rng_state(data["rng"])
        self._print(f"resumed from {found} (epoch {self.epoch}, optimizer step {self.global_step})")
        return found

    def save_final(self) -> Path:
        """``final/``: a diffusers-loadable LoRA (``pytorch_lora_weights.safetensors``) or the trained weights."""
        final = self.run_dir / "final"
        if self._is_main():
            from safetensors.torch import save_file

            final.mkdir(parents=True, exist_ok=True)
            with self.ema_weights() if self.config.eval.use_ema else contextlib.nullcontext():
                for group in self.param_groups:
                    if group.name == "denoiser" and self.config.model.lora:
                        self.adapter.save_lora(final)
                    else:
                        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in group.params.items()},
                                  str(final / f"{group.name}.safetensors"))
            from diffalign.trained import write_model_card

            write_model_card(final, self.config, run_dir=self.run_dir, recipe=self.recipe, history=self.history)
        self.accelerator.wait_for_everyone()
        return final

    def close(self) -> None:
        if self.accelerator.log_with and self._trackers_started:
            self.accelerator.end_training()


class DDPOTrainer(Trainer):
    """DDPO (see :mod:`diffalign.training.algorithms.ddpo`)."""

    algorithm_name = "ddpo"


class FlowGRPOTrainer(Trainer):
    """Flow-GRPO (see :mod:`diffalign.training.algorithms.flow_grpo`)."""

    algorithm_name = "flow_grpo"


class AWMTrainer(Trainer):
    """AWM (see :mod:`diffalign.training.algorithms.awm`)."""

    algorithm_name = "awm"
