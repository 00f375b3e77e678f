"""Time every registered adapter family on its tiny test model (CPU, fp32).

For each kind in ``tests.tiny.BUILDERS`` whose builder and adapter exist: deterministic sampling of
4 prompts × 10 steps (CFG 1, decoded), and one ``step_log_prob`` call on a stochastic rollout.
Median of ``--repeats`` runs after one warm-up. Run from the repository root::

    python bench/adapter_timings.py [--repeats 3] [--kinds sd15 sdxl]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffalign.pipelines import UnsupportedPipelineError, load  # noqa: E402
from tests import tiny  # noqa: E402

from _timing import median_seconds  # noqa: E402  (bench/ is on sys.path when run as a script)

PROMPTS = ["a red circle", "two green cats", "a blue square below a star", "a small dog on the beach"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--kinds", nargs="*", default=sorted(tiny.BUILDERS))
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(PROMPTS)} prompts × {args.steps} steps")
    print(f"{'kind':<10} {'adapter':<28} {'sample (s)':>10} {'step_log_prob (s)':>18}")
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.kinds:
            try:
                adapter = load(tiny.build(kind, Path(scratch) / kind))
            except (ModuleNotFoundError, UnsupportedPipelineError) as err:
                print(f"{kind:<10} skipped: {err}")
                continue
            adapter.pipe.set_progress_bar_config(disable=True)

            try:
                sample_s, rescore_s = _time_family(adapter, args.steps, args.repeats)
            except Exception as err:  # report the family and go on with the others
                print(f"{kind:<10} {type(adapter).__name__:<28} failed: {type(err).__name__}: {err}", flush=True)
                continue
            print(f"{kind:<10} {type(adapter).__name__:<28} {sample_s:>10.3f} {rescore_s:>18.4f}", flush=True)
    return 0


def _time_family(adapter, steps: int, repeats: int) -> tuple[float, float]:
    """Median seconds of a deterministic decoded sample and of one step_log_prob call."""

    size = tiny.SMALL_SAMPLE_SIZE.get(adapter.family, {})

    def sample():
        return adapter.sample(PROMPTS, steps, 1.0, generator=torch.Generator().manual_seed(0), **size)

    rollout = adapter.sample(
        PROMPTS, steps, 1.0, generator=torch.Generator().manual_seed(0), stochastic=True, decode=False, **size
    )

    def rescore():
        return adapter.step_log_prob(rollout, steps // 2)

    return median_seconds(sample, repeats), median_seconds(rescore, repeats)


if __name__ == "__main__":
    raise SystemExit(main())
