"""The paired two-seed rise test of the ShapesWorld recipes, and what its runs share.

Every ``*_shapes`` recipe evaluates on the same 256 held-out prompts with the same sampler, noise and
judge, so the untrained model's per-prompt scores are computed once per test session (once for all xdist
workers: the first to ask computes them under a file lock, the others read the file); the preference
recipes also share one preference dataset built from the shipped model with the judge.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pytest
import torch

#: every rise test: held-out prompts, training seeds, and the overrides that make a run a test run
NUM_HELDOUT = 256
SEEDS = (0, 1)
TEST_RUN = ["model.source=shapes-sd", "run.log_with=", "run.progress=false", "eval.every=0", "eval.at_start=false",
            "run.checkpoint_every=0", f"prompts.num_eval={NUM_HELDOUT}"]
#: the preference data the DPO-family recipes train on (prompts drawn with a seed of their own)
PREFERENCE_PROMPTS, PREFERENCE_IMAGES, PREFERENCE_STEPS = 256, 4, 10
#: captions of the expert data (rendered ground truth): 20 epochs of 64 never repeat one
EXPERT_PROMPTS = 2048


def require_shapes_sd() -> None:
    from diffalign.pipelines import shipped_model_path

    if shipped_model_path("shapes-sd") is None:
        pytest.skip("shapes-sd is not in assets/models")


class ShapesRise:
    """Lazily computed, shared once per session: ``start()``, ``preference_data()`` and ``expert_data()``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._start: torch.Tensor | None = None
        self._data: Path | None = None
        self._experts: Path | None = None

    def start(self) -> torch.Tensor:
        """Per-prompt held-out judge scores of the untrained shapes-sd (a fresh LoRA is zero)."""
        if self._start is None:
            from filelock import FileLock

            require_shapes_sd()
            saved = self.folder / "start.pt"
            with FileLock(str(saved) + ".lock"):
                if not saved.exists():
                    from diffalign.training import Trainer

                    trainer = Trainer("awm_shapes", overrides=TEST_RUN, run_dir=self.folder / "start")
                    torch.save(torch.tensor(trainer.evaluate()["eval/rewards"]), saved)
            self._start = torch.load(saved, weights_only=True)
        return self._start

    def preference_data(self) -> Path:
        """``diffalign prefs build`` on shapes-sd with the judge (no CFG, as the recipes evaluate)."""
        if self._data is None:
            from filelock import FileLock

            require_shapes_sd()
            folder = self.folder / "prefs"
            with FileLock(str(folder) + ".lock"):
                if not (folder / "pairs.jsonl").exists():
                    from diffalign import scorers
                    from diffalign.pipelines import load
                    from diffalign.preferences.build import build_preferences
                    from diffalign.training.prompts import derive_seed, prompt_source

                    prompts = prompt_source("shapes").draw(PREFERENCE_PROMPTS, derive_seed(0, "preference-data"))
                    build_preferences(load("shapes-sd"), prompts, scorers.load("shapes", mode="fraction"), folder,
                                      images_per_prompt=PREFERENCE_IMAGES, steps=PREFERENCE_STEPS, guidance_scale=1.0,
                                      seed=0, batch_size=16, pairing="every")
            self._data = folder
        return self._data

    def expert_data(self) -> Path:
        """``diffalign prefs experts`` on ``EXPERT_PROMPTS`` captions: each caption's rendered ground truth."""
        if self._experts is None:
            from filelock import FileLock

            folder = self.folder / "experts"
            with FileLock(str(folder) + ".lock"):
                if not (folder / "experts.jsonl").exists():
                    from diffalign.preferences.build import shapes_experts
                    from diffalign.training.prompts import derive_seed, prompt_source

                    shapes_experts(prompt_source("shapes").draw(EXPERT_PROMPTS, derive_seed(0, "preference-data")),
                                   folder, seed=0)
            self._experts = folder
        return self._experts

    def assert_rises(self, recipe: str, overrides: Sequence[str], run_dir: Path, scores: str = "eval/rewards",
                     own_start: bool = False) -> float:
        """Train ``recipe`` on two seeds; the held-out gain averaged over seeds must exceed 0.02 and twice
        its standard error over prompts (a paired test: each prompt is scored with the same noise).
        ``scores="eval/golds"``: a recipe whose reward is a proxy is judged by its gold scorer (``eval.gold``
        set to the judge), the judge's scores of the trained model against the same start.
        ``own_start``: the start is the first seed's run evaluated before training, for a recipe whose
        held-out prompts or sampler are not the shared ones (its untrained runs are the same on every seed)."""
        from diffalign.training import Trainer

        start, gains = (None if own_start else self.start()), []
        for seed in SEEDS:
            trainer = Trainer(recipe, overrides=[*TEST_RUN, f"run.seed={seed}", *overrides], run_dir=run_dir / f"seed{seed}")
            if start is None:
                start = torch.tensor(trainer.evaluate(save_grid=False)[scores])
            trainer.train()
            end = torch.tensor(trainer.evaluate()[scores])
            gains.append(end - start)
            print(f"{recipe} seed {seed}: held-out judge score {start.mean():.3f} -> {end.mean():.3f}")
        gain = torch.stack(gains).mean(dim=0)
        mean, stderr = gain.mean().item(), gain.std().item() / math.sqrt(len(gain))
        print(f"{recipe}: gain over seeds {mean:+.3f} +- {stderr:.3f}")
        assert mean > max(0.02, 2 * stderr), f"{recipe}: gain {mean:+.3f} +- {stderr:.3f}"
        return mean
