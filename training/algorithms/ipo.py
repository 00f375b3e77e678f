"""IPO: Iterative Preference Optimization for text-to-video (Yang et al., arXiv 2502.02088; v4: Dual-IPO).

No training code or data was ever released (only CogVideoX inference scripts), so everything below the round
structure is this package's reading of the paper; values marked *unverified* are guesses.

Training runs in **rounds** of ``ipo.epochs_per_round`` trainer epochs. Round ``r`` starts with the model
``θ_r`` and:

1. **Generate** ``N = ipo.videos_per_prompt`` videos for each of ``ipo.prompts_per_round`` prompts (drawn by
   ``(seed, r)``) with ``θ_r`` and the ``[sampling]`` settings; candidate ``k`` of prompt ``i`` starts from noise
   seeded by ``(seed, r, i, k)``. Only the final latents are kept (``rollout_latents = "final"``).
2. **Label** them with a critic (``ipo.critic``, any registered scorer; empty: ``reward.spec``):

   * ``feedback = "pairwise"`` (Diffusion-DPO). A critic that compares (the MLLM critic's ``compare``) is
     asked ``P(k ≻ l)`` for every two candidates ``k < l`` of a prompt; candidate ``k``'s Borda score is
     ``w_k = Σ_{l≠k} P(k ≻ l)`` with ``P(l ≻ k) = 1 - P(k ≻ l)``. A critic that only scores gives
     ``P(k ≻ l)`` = 1, ½ or 0 by its scores (so ``w`` ranks as the scores do). The pair is (argmax w,
     argmin w), soft label ``P(best ≻ worst)`` (1 from scores); equal ``w`` everywhere: no pair (a tie).
     ``ipo.pairs = "every"`` (ours, not the paper's) keeps every two candidates the critic tells apart
     instead: the one with ``P(k ≻ l) > ½`` preferred, soft label ``max(P, 1 - P)`` (1 from scores).
   * ``feedback = "pointwise"`` (Diffusion-KTO): each video is desirable when its critic score
     ``> ipo.threshold`` (0.5: the MLLM critic's ``P(Yes)``; unverified).

   Questions go to the critic ``ipo.label_batch_size`` at a time and every answer is appended to the round's
   ``labels.jsonl`` as it comes, so a round killed while labelling resumes without asking again.
3. **Train** with the existing loss, the reference being ``θ_r`` (snapshot ``ipo_round_start``, refreshed at
   every round start; the paper's "multi-round" implies it, unverified):

   * DPO: ``L_pref = -log σ(-(β/2)·[(e_θ(x^w) - e_r(x^w)) - (e_θ(x^l) - e_r(x^l))]) + λ₁·e_θ(x^w)``
     (``[dpo]`` section; ``λ₁ = dpo.winner_weight``, Dual-IPO's ``λ1·E[-log p_θ(y^w|x)]``, 0 by default,
     the weight unverified),
   * KTO: ``L_pref = λ_y·(1 - σ(s_y·β·(e_r(x) - e_θ(x) - z0)))`` (``[kto]`` section),

   with ``e(x) = mean_d ||target - f(x_t, t, c)||²`` in the model's prediction space and ``e_r`` under
   ``θ_r``. The optional **real-video regulariser** adds ``λ·mean e_θ(x_real)`` on real (caption, clip) pairs
   from ``[data]`` (an experts/winners source; on ShapesWorld the rendered ground truth), ``λ =
   ipo.real_weight`` (the paper gives no weight: unverified): ``L = L_pref + λ·L_real``.

Each epoch trains on ``ipo.examples_per_epoch`` examples drawn from the round's pairs or labels (a seeded
permutation, repeated when the round has fewer). The round folder ``<run>/rounds/round_NNN`` holds the
candidates (``candidates.safetensors``, ``candidates.json``, ``videos/``), ``labels.jsonl`` (the critic's
answers), ``preferences.jsonl`` (pairs or labels), ``metrics.json`` (counts, seconds of sampling and
labelling, summed over tries of a resumed round) and ``eval.json`` (the held-out evaluation at the round's end
and the round's training metrics).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from diffalign.config import ConfigError, register_section
from diffalign.errors import read_json

from .base import ALGORITHMS, Algorithm, register_algorithm
from .real_data import RealDataLoss

__all__ = ["IPO", "IPOConfig", "Critic", "ROUND_SNAPSHOT", "borda_pair"]

logger = logging.getLogger(__name__)

#: the snapshot holding the round's starting weights (the loss's reference)
ROUND_SNAPSHOT = "ipo_round_start"


class Critic(Protocol):
    """What labels a round: ``critic(media, prompts) -> Tensor[B]`` (higher is better), and optionally
    ``compare(media_a, media_b, prompts) -> Tensor[B]``, the probability that ``media_a[i]`` is better."""

    def __call__(self, media: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


@register_section("ipo")
@dataclass
class IPOConfig:
    #: pairwise: best-vs-worst pairs trained with Diffusion-DPO; pointwise: good/bad labels with Diffusion-KTO
    feedback: Literal["pairwise", "pointwise"] = "pairwise"
    #: trainer epochs per round (run.epochs must be a multiple)
    epochs_per_round: int = 1
    prompts_per_round: int = 8
    #: N videos generated per prompt and round (the released inference scripts sample 2 per prompt)
    videos_per_prompt: int = 2
    #: the critic: a scorer spec (``critic`` is the MLLM critic); empty: ``reward.spec``
    critic: str = ""
    critic_options: dict[str, Any] = field(default_factory=dict)
    #: pairwise feedback: ask the critic's pairwise question when it has one (else rank by its scores)
    compare: bool = True
    #: pairwise feedback: the best vs the worst candidate of a prompt (the paper's), or every two the critic
    #: tells apart (ours: more pairs from the same videos)
    pairs: Literal["best_worst", "every"] = "best_worst"
    #: critic questions per call
    label_batch_size: int = 4
    #: pointwise feedback: a video is desirable when its score exceeds this (unverified)
    threshold: float = 0.5
    #: examples (pairs or labelled videos) trained on per epoch
    examples_per_epoch: int = 8
    #: λ of the real-video regulariser (0: off); its clips come from ``[data]`` (unverified weight)
    real_weight: float = 0.0
    #: write each candidate as a video (MP4) or image (PNG) into the round folder
    save_media: bool = True

    def validate(self) -> None:
        for key in ("epochs_per_round", "prompts_per_round", "label_batch_size", "examples_per_epoch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"ipo.{key} must be >= 1, got {getattr(self, key)}")
        if self.videos_per_prompt < 2:
            raise ConfigError(f"ipo.videos_per_prompt must be >= 2 to compare videos, got {self.videos_per_prompt}")
        if not self.real_weight >= 0:
            raise ConfigError(f"ipo.real_weight must be >= 0, got {self.real_weight}")
        if self.threshold != self.threshold:
            raise ConfigError("ipo.threshold must be a number, got NaN")
        if self.pairs != "best_worst" and self.feedback != "pairwise":
            raise ConfigError(f"ipo.pairs = {self.pairs!r} chooses pairs, but ipo.feedback = {self.feedback!r} trains on "
                              f"labels: set ipo.feedback = \"pairwise\" or leave ipo.pairs out")
        if self.critic_options and not self.critic:
            raise ConfigError("ipo.critic_options are given but ipo.critic is empty (the reward is the critic): "
                              "set ipo.critic or move the options to reward.options")


def borda_pair(count: int, wins: dict[tuple[int, int], float]) -> tuple[int, int, float] | None:
    """``(best, worst, P(best ≻ worst))`` from ``P(k ≻ l)`` for every ``k < l`` of ``count`` candidates, by
    Borda score ``w_k = Σ_l P(k ≻ l)``; ``None`` when every ``w`` is equal (first index wins ties)."""
    def p(k: int, l: int) -> float:
        return wins[(k, l)] if k < l else 1.0 - wins[(l, k)]

    scores = [sum(p(k, l) for l in range(count) if l != k) for k in range(count)]
    best = max(range(count), key=lambda k: (scores[k], -k))
    worst = min(range(count), key=lambda k: (scores[k], k))
    if scores[best] == scores[worst]:
        return None
    return best, worst, p(best, worst)


@register_algorithm
class IPO(Algorithm):
    name = "ipo"
    config_class = IPOConfig
    needs_log_probs = False
    default_advantage_mode = None
    drop_zero_refused = "it filters online advantages; IPO trains on critic preferences"
    rollout_latents = "final"

    def __init__(self, config):
        super().__init__(config)
        objective = "dpo" if self.cfg.feedback == "pairwise" else "kto"
        #: the DPO or KTO algorithm that gives the loss (its own config section), against the round's start
        self.objective = ALGORITHMS.get(objective)(config, reference=ROUND_SNAPSHOT, reads_data=False)
        #: labels the rounds (see :class:`Critic`); loaded at the first round unless set before
        self.critic: Critic | None = None
        self.critic_calls = 0
        self._round: int | None = None
        self._round_data = None
        self._round_stats: dict[str, Any] = {}

    # --------------------------------------------------------------------------------- config
    def validate(self) -> None:
        super().validate()
        c, run, e = self.cfg, self.config.run, self.config.eval
        if run.epochs % c.epochs_per_round:
            raise ConfigError(f"run.epochs = {run.epochs} must be a multiple of ipo.epochs_per_round = {c.epochs_per_round}")
        if not e.every or c.epochs_per_round % e.every:
            raise ConfigError(f"ipo writes an eval report per round: eval.every = {e.every} must divide "
                              f"ipo.epochs_per_round = {c.epochs_per_round} (e.g. eval.every = {c.epochs_per_round})")
        #: the real-video regulariser λ·L_real (off at λ = 0)
        self.real = RealDataLoss(self, c.real_weight, "ipo.real_weight", "real")
        self.real.validate(c.examples_per_epoch, "ipo.examples_per_epoch")

    def samples_per_epoch(self) -> int:
        return self.cfg.examples_per_epoch

    def samples_per_epoch_source(self) -> str:
        return f"ipo.examples_per_epoch {self.cfg.examples_per_epoch}"

    def micro_steps_per_batch(self) -> int:
        return 1

    def setup(self, trainer) -> None:
        super().setup(trainer)
        self.objective.setup(trainer)
        if trainer.accelerator.num_processes > 1:
            raise ConfigError("ipo runs on one process: its rounds sample and label on the main process only")
        self.real.setup()

    def round_dir(self, round_index: int) -> Path:
        return self.trainer.run_dir / "rounds" / f"round_{round_index:03d}"

    def load_critic(self) -> Critic:
        if self.critic is None:
            if self.cfg.critic:
                from diffalign import scorers

                critic = scorers.load(self.cfg.critic, **self.cfg.critic_options)
                if isinstance(critic, torch.nn.Module):
                    critic = critic.to(self.trainer.accelerator.device).eval()
                self.critic = critic
            else:
                self.critic = self.trainer.reward
        return self.critic

    # ------------------------------------------------------------------------------ a round
    def collect(self, epoch: int):
        round_index, offset = divmod(epoch, self.cfg.epochs_per_round)
        if offset == 0:  # a round starts (again, when resumed): the reference is the model as it is now
            self.adapter.save_snapshot(ROUND_SNAPSHOT)
        if self._round != round_index:
            self._round_data = self.run_round(round_index)
            self._round = round_index
        data = self._round_data
        n, want = data.batch_size, self.cfg.examples_per_epoch
        order = torch.randperm(n, generator=self.generator("draw", epoch))
        index = order.repeat((want + n - 1) // n)[:want]
        batch = data[index]
        batch.extras["sample_index"] = torch.arange(want) + epoch * want
        self.real.attach(batch.extras)
        return batch.to(self.trainer.accelerator.device)

    def run_round(self, round_index: int):
        """Sample (or read back) the round's candidates, label what is not labelled yet, build its examples."""
        from diffalign.training.prompts import derive_seed

        c = self.cfg
        folder = self.round_dir(round_index)
        folder.mkdir(parents=True, exist_ok=True)
        prompts = self.trainer._train_source.draw(c.prompts_per_round, derive_seed(self.config.run.seed, "ipo-prompts", round_index))
        started = time.time()
        latents, media, sampled = self._candidates(round_index, prompts, folder)
        sampling_seconds = time.time() - started
        started = time.time()
        calls_before = self.critic_calls
        try:
            answers = self._label(folder, prompts, media)
        except BaseException:  # killed while labelling: what this try cost is still counted
            self._write_round_metrics(folder, {
                "round": round_index, "interrupted": True, "sampled": sampled, "sampling_seconds": sampling_seconds,
                "critic_calls": self.critic_calls - calls_before, "labelling_seconds": time.time() - started})
            raise
        labelling_seconds = time.time() - started
        rows = self._preferences(prompts, answers)
        if not rows:
            raise RuntimeError(f"IPO round {round_index}: the critic tied on every prompt, nothing to train on; "
                               f"raise ipo.videos_per_prompt or ipo.prompts_per_round")
        (folder / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        data = self._examples(round_index, rows, latents)
        stats = {
            "round": round_index, "prompts": len(prompts), "candidates": latents.shape[0], "examples": len(rows),
            "ties": len(prompts) - len({r["index"] for r in rows}) if c.feedback == "pairwise" else 0,
            "critic_calls": self.critic_calls - calls_before, "questions": len(answers),
            "sampled": sampled, "sampling_seconds": sampling_seconds, "labelling_seconds": labelling_seconds,
        }
        if c.feedback == "pointwise":
            stats["desirable_fraction"] = sum(r["desirable"] for r in rows) / len(rows)
        self._round_stats = self._write_round_metrics(folder, stats)
        logger.info("ipo round %d: %d examples from %d candidates (%d critic calls)", round_index, len(rows),
                    latents.shape[0], stats["critic_calls"])
        return data

    @staticmethod
    def _write_round_metrics(folder: Path, stats: dict[str, Any]) -> dict[str, Any]:
        """``metrics.json``; a round tried before adds that try's critic calls and seconds (``tries`` counts)."""
        path = folder / "metrics.json"
        stats = {**stats, "tries": 1}
        if path.exists():
            before = read_json(path, "the round's metrics")
            for key in ("critic_calls", "sampling_seconds", "labelling_seconds"):
                stats[key] = stats.get(key, 0) + before.get(key, 0)
            stats["sampled"] = stats["sampled"] or before.get("sampled", False)
            stats["tries"] = before.get("tries", 1) + 1
        path.write_text(json.dumps(stats, indent=2) + "\n")
        return stats

    def _candidates(self, round_index: int, prompts: list[str], folder: Path) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Final latents ``(P·N)×L`` and decoded media of the round's candidates (prompt-major); read back from
        the folder when a previous try of the round sampled them."""
        from safetensors.torch import load_file, save_file

        from diffalign.training.prompts import derive_seed

        c = self.cfg
        path, meta = folder / "candidates.safetensors", folder / "candidates.json"
        expected = {"round": round_index, "prompts": prompts, "videos_per_prompt": c.videos_per_prompt}
        if path.exists() and meta.exists() and read_json(meta, "the round's candidate list") == expected:
            latents = load_file(str(path))["latents"]
            return latents, self._decode_each(latents), False
        items = [(i, k) for i in range(len(prompts)) for k in range(c.videos_per_prompt)]
        batch = self.config.sampling.batch_size
        latents = []
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            generators = [torch.Generator("cpu").manual_seed(derive_seed(self.config.run.seed, "ipo", round_index, i, k))
                          for i, k in chunk]
            with torch.no_grad():
                rollout = self.rollout([prompts[i] for i, _ in chunk], generators, decode=False)
            latents.append(rollout.final_latents.detach().float().cpu())
        latents = torch.cat(latents)
        media = self._decode_each(latents)
        if c.save_media:
            from diffalign.media import save_image, save_video

            for (i, k), item in zip(items, media):
                if item.ndim == 4:
                    save_video(item, folder / "videos" / f"{i:04d}_{k}.mp4", fps=self.config.sampling.fps)
                else:
                    save_image(item, folder / "videos" / f"{i:04d}_{k}.png")
        save_file({"latents": latents.float().cpu().contiguous()}, str(path))
        meta.write_text(json.dumps(expected) + "\n")
        return latents, media, True

    def _decode_each(self, latents: torch.Tensor) -> torch.Tensor:
        """Media of the float32 CPU latents one at a time: the same numbers whether the round was just sampled
        or read back after a restart (a batched decode may differ in the last bits)."""
        adapter = self.adapter
        with torch.no_grad():
            return torch.cat([adapter.decode(x[None].to(adapter.device, adapter.dtype)).float().cpu() for x in latents])

    def _questions(self, prompts: list[str], critic) -> list[tuple[str, int, tuple[int, ...]]]:
        """``(key, prompt index, candidates)``: a pair ``(k, l)`` to compare or one candidate ``(k,)`` to score."""
        n = self.cfg.videos_per_prompt
        if self.cfg.feedback == "pairwise" and self.cfg.compare and hasattr(critic, "compare"):
            return [(f"{i}:{k}>{l}", i, (k, l)) for i in range(len(prompts)) for k in range(n) for l in range(k + 1, n)]
        return [(f"{i}:{k}", i, (k,)) for i in range(len(prompts)) for k in range(n)]

    def _label(self, folder: Path, prompts: list[str], media: torch.Tensor) -> dict[str, float]:
        """The critic's answer to every question of the round (key -> value); answers already in
        ``labels.jsonl`` are reused, new ones appended as they come."""
        critic = self.load_critic()
        path = folder / "labels.jsonl"
        answers: dict[str, float] = {}
        if path.exists():
            text = path.read_text()
            if not text.endswith("\n"):  # a line cut short by a kill: dropped, its question asked again
                text = text[: text.rfind("\n") + 1]
                path.write_text(text)
            for line in text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    answers[row["key"]] = float(row["value"])
        n = self.cfg.videos_per_prompt
        todo = [q for q in self._questions(prompts, critic) if q[0] not in answers]
        with open(path, "a") as out:
            for start in range(0, len(todo), self.cfg.label_batch_size):
                chunk = todo[start : start + self.cfg.label_batch_size]
                chunk_prompts = [prompts[i] for _, i, _ in chunk]
                first = torch.stack([media[i * n + ks[0]] for _, i, ks in chunk])
                self.critic_calls += 1
                with torch.no_grad():
                    if len(chunk[0][2]) == 2:
                        second = torch.stack([media[i * n + ks[1]] for _, i, ks in chunk])
                        values = critic.compare(first, second, chunk_prompts)
                    else:
                        values = critic(first, chunk_prompts)
                values = torch.as_tensor(values, dtype=torch.float64).reshape(-1).tolist()
                if len(values) != len(chunk):
                    raise ValueError(f"the critic returned {len(values)} answers for {len(chunk)} questions")
                for (key, i, _), value in zip(chunk, values):
                    answers[key] = value
                    out.write(json.dumps({"key": key, "prompt": prompts[i], "value": value}) + "\n")
                out.flush()
        return answers

    def _preferences(self, prompts: list[str], answers: dict[str, float]) -> list[dict[str, Any]]:
        """Pairs (best vs worst) or labels from the answers; a NaN answer leaves its prompt out."""
        n = self.cfg.videos_per_prompt
        rows = []
        for i, prompt in enumerate(prompts):
            if self.cfg.feedback == "pointwise":
                for k in range(n):
                    value = answers[f"{i}:{k}"]
                    if value == value:
                        rows.append({"prompt": prompt, "index": i, "media": k, "score": value,
                                     "desirable": value > self.cfg.threshold})
                continue
            if f"{i}:0>1" in answers:
                wins = {(k, l): answers[f"{i}:{k}>{l}"] for k in range(n) for l in range(k + 1, n)}
                if any(v != v for v in wins.values()):
                    continue
            else:  # a critic that scores: P(k ≻ l) is 1, ½ or 0 by the scores (the same best, worst and ties)
                scores = [answers[f"{i}:{k}"] for k in range(n)]
                if any(v != v for v in scores):
                    continue
                wins = {(k, l): 0.5 * (1 + (scores[k] > scores[l]) - (scores[k] < scores[l]))
                        for k in range(n) for l in range(k + 1, n)}
            if self.cfg.pairs == "every":
                chosen = [(k, l, p) if p > 0.5 else (l, k, 1.0 - p) for (k, l), p in wins.items() if p != 0.5]
            else:
                chosen = [pair] if (pair := borda_pair(n, wins)) is not None else []
            rows += [{"prompt": prompt, "index": i, "preferred": w, "rejected": l, "soft_label": p} for w, l, p in chosen]
        return rows

    def _examples(self, round_index: int, rows: list[dict[str, Any]], latents: torch.Tensor):
        from diffalign.preferences import PreferenceBatch

        n = self.cfg.videos_per_prompt
        prompts = [r["prompt"] for r in rows]
        if self.cfg.feedback == "pairwise":
            x0 = torch.stack([torch.stack([latents[r["index"] * n + r["preferred"]], latents[r["index"] * n + r["rejected"]]])
                              for r in rows])
            labels = torch.tensor([r["soft_label"] for r in rows], dtype=torch.float32)
            ids = [f"round{round_index}/{r['index']}:{r['preferred']}>{r['rejected']}" for r in rows]
            kind = "pairs"
        else:
            x0 = torch.stack([latents[r["index"] * n + r["media"]] for r in rows])
            labels = torch.tensor([float(r["desirable"]) for r in rows])
            ids = [f"round{round_index}/{r['index']}:{r['media']}" for r in rows]
            kind = "labels"
        with torch.no_grad():
            conditioning = self.adapter.encode_prompts(prompts, do_cfg=False)
        batch = PreferenceBatch(kind=kind, prompts=prompts, row_ids=ids, latents=x0.float().cpu(), labels=labels)
        batch.conditioning = {"cond": conditioning["cond"], "uncond": None}
        return batch.to("cpu")

    # ------------------------------------------------------------------------------- training
    def epoch_stats(self, batch) -> dict[str, Any]:
        keep = ("round", "examples", "ties", "critic_calls", "sampling_seconds", "labelling_seconds", "desirable_fraction")
        stats = {f"ipo/{k}": v for k, v in self._round_stats.items() if k in keep}
        stats["label_mean"] = float(batch.labels.float().mean())
        return stats

    def micro_batches(self, batch, epoch: int, inner_epoch: int):
        return self.objective.micro_batches(batch, epoch, inner_epoch)

    def loss(self, micro):
        loss, stats = self.objective.loss(micro)
        batch = micro[0]
        return self.real.add_to(loss, stats, batch.extras, batch.extras["sample_index"], "real_loss")

    # ---------------------------------------------------------------------------- reports
    def after_evaluation(self, result: dict[str, Any]) -> None:
        epoch = int(result["epoch"])
        trainer = self.trainer
        if not trainer._is_main() or not trainer._trackers_started or epoch % self.cfg.epochs_per_round:
            return  # reports belong to a training run's round ends
        if epoch == 0:
            path = self.trainer.run_dir / "rounds" / "start_eval.json"
        else:
            path = self.round_dir(epoch // self.cfg.epochs_per_round - 1) / "eval.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        report = {k: v for k, v in result.items()}
        report["prompts"] = list(self.trainer.eval_prompts)
        first = epoch - self.cfg.epochs_per_round
        report["training"] = [h for h in self.trainer.history if "loss" in h and first < h.get("epoch", -1) <= epoch]
        path.write_text(json.dumps(report, indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"critic_calls": self.critic_calls}
        if self.real.enabled:
            state["real_data"] = self.real.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic_calls = int(state.get("critic_calls", 0))
        self.real.load_state_dict(state.get("real_data"))
