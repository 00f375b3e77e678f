"""ShapesEval: GenEval's six tasks on ShapesWorld, judged exactly by :mod:`diffalign.shapes.judge`.

The suite is fixed and versioned (``assets/prompts/shapes_eval_v1.jsonl``, GenEval metadata rows,
built by :func:`build_prompt_suite` and regenerated with ``python -m diffalign.eval.shapes_eval``).
Per task it holds up to 24 distinct prompts; tasks with a small prompt space hold all of theirs
(single_object: 3, two_object: 6, counting: 9). Protocol: 4 images per prompt, per-image seeds,
the judge's binary verdict; the headline is the unweighted mean of the six task accuracies, as in
GenEval. ``run_shapes_eval(sampler, out_dir)`` is the Python entry point; ``diffalign eval shapes
--model shapes-sd`` the command line.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from diffalign.assets_path import asset_path
from diffalign.shapes import judge as shapes_judge
from diffalign.shapes import world

from .benchmark import (
    Benchmark, PromptItem, SamplingProtocol, distinct_prompt_suite, run_benchmark, suite_items, write_prompt_suite,
)

NAME = "ShapesEval"
VERSION = "v1"
PROMPTS_PER_TASK = 24
SUITE_SEED = 2024


def suite_path(version: str = VERSION) -> Path:
    return asset_path("prompts", f"shapes_eval_{version}.jsonl")


def build_prompt_suite(per_task: int = PROMPTS_PER_TASK, seed: int = SUITE_SEED, tasks: Sequence[str] = world.TASKS) -> list[dict[str, Any]]:
    """Distinct prompts per task, drawn as GenEval draws them (duplicates removed), in task order."""
    return distinct_prompt_suite(world.sample_metadata, tasks, per_task, seed)


def shapes_judge_fn(media: torch.Tensor, items: Sequence[PromptItem]) -> list[shapes_judge.Verdict]:
    """The benchmark judge: GenEval rules on ShapesWorld detections."""
    return shapes_judge.judge_batch(media, [item.metadata for item in items])


def shapes_eval_benchmark(prompts: str | Path | Sequence[Mapping[str, Any]] | None = None, protocol: SamplingProtocol | None = None) -> Benchmark:
    """ShapesEval with the shipped suite (or a given JSONL path / list of metadata dicts)."""
    items = suite_items(prompts, suite_path())
    for item in items:  # every prompt must be inside the grammar the judge understands
        world.parse_caption(item.prompt)
    return Benchmark(NAME, VERSION, items, shapes_judge_fn, protocol or SamplingProtocol(), tasks=world.TASKS)


class GroundTruthSampler:
    """A sampler with the adapter's ``sample`` signature that renders each prompt's ground truth.

    It is the judge's upper bound (ShapesEval overall 1.0) and a stand-in model in tests. The scene
    layout follows the generator's seed, so runs are reproducible.
    """

    def __init__(self, size: int = world.IMAGE_SIZE):
        self.size = size

    def sample(self, prompts: Sequence[str] | str, steps: int = 1, guidance_scale: float = 1.0, generator: Any = None, **_: Any) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        generators = generator if isinstance(generator, (list, tuple)) else [generator] * len(prompts)
        images = []
        for index, (prompt, gen) in enumerate(zip(prompts, generators)):
            seed = gen.initial_seed() if isinstance(gen, torch.Generator) else index
            scene = world.scene_for(world.parse_caption(prompt), random.Random(seed))
            images.append(world.render_tensor(scene, self.size))
        return torch.stack(images)


def run_shapes_eval(
    sampler: Any,
    out_dir: str | Path,
    *,
    images_per_prompt: int = 4,
    steps: int = 20,
    guidance_scale: float = 4.5,
    seed: int = 42,
    batch_size: int = 16,
    max_prompts_per_task: int | None = None,
    prompts: str | Path | Sequence[Mapping[str, Any]] | None = None,
    model_name: str | None = None,
    progress: bool = True,
    resume: bool = False,
    save_images: bool = True,
    **sample_kwargs: Any,
) -> dict[str, Any]:
    """Run ShapesEval for ``sampler`` (an adapter from ``diffalign.pipelines.load`` or anything with
    its ``sample`` signature) and write results, summary and grid into ``out_dir``."""
    protocol = SamplingProtocol(images_per_prompt, steps, guidance_scale, seed, batch_size, dict(sample_kwargs))
    benchmark = shapes_eval_benchmark(prompts, protocol)
    return run_benchmark(
        benchmark,
        sampler,
        out_dir,
        max_prompts_per_task=max_prompts_per_task,
        model_name=model_name,
        progress=progress,
        resume=resume,
        save_images=save_images,
    )


def main() -> None:
    """Regenerate the shipped prompt suite (``python -m diffalign.eval.shapes_eval``)."""
    path = write_prompt_suite(build_prompt_suite(), suite_path())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()


__all__ = [
    "GroundTruthSampler", "NAME", "VERSION", "build_prompt_suite", "run_shapes_eval", "shapes_eval_benchmark",
    "shapes_judge_fn", "suite_path",
]
