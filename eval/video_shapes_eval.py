"""VideoShapesEval: ShapesWorld in motion, judged exactly by :mod:`diffalign.shapes.video_judge`.

The suite is fixed and versioned (``assets/prompts/video_shapes_eval_v1.jsonl``, one motion
metadata row per prompt, built by :func:`build_prompt_suite` and regenerated with
``python -m diffalign.eval.video_shapes_eval``). Per task it holds up to 16 distinct prompts
(``moving`` holds all 12 of its own). Tasks (:data:`diffalign.shapes.motion.MOTION_TASKS`): one object
moving in a direction, with and without its colour; a still coloured object; two coloured objects
both moving; one moving and one still. Protocol as ShapesEval: 4 videos per prompt, per-video
seeds, the judge's binary verdict; the headline is the unweighted mean of the task accuracies.
``run_video_shapes_eval(sampler, out_dir)`` is the Python entry point, ``diffalign eval shapes-video``
the command line. The sampler's ``sample`` must return ``B×T×3×H×W`` videos (or a rollout whose
``.media`` is one); ``frames`` is passed to it as ``num_frames``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from diffalign.assets_path import asset_path
from diffalign.shapes import motion
from diffalign.shapes import video_judge

from .benchmark import (
    Benchmark, PromptItem, SamplingProtocol, distinct_prompt_suite, run_benchmark, suite_items, write_prompt_suite,
)

NAME = "VideoShapesEval"
VERSION = "v1"
PROMPTS_PER_TASK = 16
SUITE_SEED = 2025


def suite_path(version: str = VERSION) -> Path:
    return asset_path("prompts", f"video_shapes_eval_{version}.jsonl")


def build_prompt_suite(per_task: int = PROMPTS_PER_TASK, seed: int = SUITE_SEED, tasks: Sequence[str] = motion.MOTION_TASKS) -> list[dict[str, Any]]:
    """Distinct prompts per task (duplicates redrawn until the task's prompt space runs out), in task order."""
    return distinct_prompt_suite(motion.sample_motion_metadata, tasks, per_task, seed)


def video_judge_fn(media: torch.Tensor, items: Sequence[PromptItem]) -> list[Any]:
    """The benchmark judge: tracks and motion verdicts on ShapesWorld clips."""
    return video_judge.judge_videos(media, [item.metadata for item in items])


def video_shapes_eval_benchmark(prompts: str | Path | Sequence[Mapping[str, Any]] | None = None, protocol: SamplingProtocol | None = None) -> Benchmark:
    """VideoShapesEval with the shipped suite (or a given JSONL path / list of metadata dicts)."""
    items = suite_items(prompts, suite_path())
    # every prompt must be inside the grammar the judge understands; a suite's own task names are kept
    items = [PromptItem(item.index, {**motion.motion_metadata(item.metadata), "tag": item.tag}) if "tag" in item.metadata
             else PromptItem(item.index, motion.motion_metadata(item.metadata)) for item in items]
    return Benchmark(NAME, VERSION, items, video_judge_fn, protocol or SamplingProtocol(), tasks=motion.MOTION_TASKS, modality="video")


class GroundTruthVideoSampler:
    """A sampler with the adapter's ``sample`` signature that renders each prompt's ground-truth clip:
    the judge's upper bound (overall 1.0) and a stand-in video model in tests; layouts follow the seeds."""

    def __init__(self, frames: int = motion.DEFAULT_FRAMES, size: int = motion.VIDEO_SIZE):
        self.frames, self.size = motion.check_frames(frames), size

    def sample(self, prompts: Sequence[str] | str, steps: int = 1, guidance_scale: float = 1.0, generator: Any = None,
               num_frames: int | None = None, **_: Any) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        generators = generator if isinstance(generator, (list, tuple)) else [generator] * len(prompts)
        frames = num_frames or self.frames
        videos = []
        for index, (prompt, gen) in enumerate(zip(prompts, generators)):
            seed = gen.initial_seed() if isinstance(gen, torch.Generator) else index
            videos.append(motion.render_video(motion.motion_scene_for(prompt, random.Random(seed), frames), frames, self.size))
        return torch.stack(videos)


def run_video_shapes_eval(
    sampler: Any,
    out_dir: str | Path,
    *,
    videos_per_prompt: int = 4,
    frames: int | None = None,
    steps: int = 20,
    guidance_scale: float = 4.5,
    seed: int = 42,
    batch_size: int = 8,
    max_prompts_per_task: int | None = None,
    prompts: str | Path | Sequence[Mapping[str, Any]] | None = None,
    model_name: str | None = None,
    progress: bool = True,
    resume: bool = False,
    save_videos: bool = True,
    **sample_kwargs: Any,
) -> dict[str, Any]:
    """Run VideoShapesEval for ``sampler`` and write results, summary, MP4s, ``grid.mp4`` and a
    ``frames.png`` strip into ``out_dir``; returns the summary (``overall``, per-task ``tasks``)."""
    if frames is not None:
        sample_kwargs["num_frames"] = motion.check_frames(frames)
    protocol = SamplingProtocol(videos_per_prompt, steps, guidance_scale, seed, batch_size, dict(sample_kwargs))
    benchmark = video_shapes_eval_benchmark(prompts, protocol)
    return run_benchmark(
        benchmark, sampler, out_dir, max_prompts_per_task=max_prompts_per_task, model_name=model_name,
        progress=progress, resume=resume, save_images=save_videos,
    )


def main() -> None:
    """Regenerate the shipped prompt suite (``python -m diffalign.eval.video_shapes_eval``)."""
    path = write_prompt_suite(build_prompt_suite(), suite_path())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()


__all__ = [
    "GroundTruthVideoSampler", "NAME", "VERSION", "build_prompt_suite", "run_video_shapes_eval", "suite_path",
    "video_judge_fn", "video_shapes_eval_benchmark",
]
