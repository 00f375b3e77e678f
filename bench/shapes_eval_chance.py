"""ShapesEval per task, and the same images judged against another prompt of the same task.

The second number is what the model would score if it ignored what the prompt says but kept its
task's form (a "chance" level per task): a model is above chance on a task when its accuracy on
its own prompts beats that. Run::

    python bench/shapes_eval_chance.py --model shapes-sd
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from diffalign.eval.benchmark import load_prompt_suite
    from diffalign.eval.cli import model_sampling_defaults
    from diffalign.eval.shapes_eval import suite_path
    from diffalign.pipelines import load
    from diffalign.shapes import judge

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-sd")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    defaults = model_sampling_defaults(args.model)
    adapter = load(args.model)
    items = load_prompt_suite(suite_path())
    by_task: dict[str, list] = {}
    for item in items:
        by_task.setdefault(item.tag, []).append(item)
    print(f"| task | accuracy (own prompt) | accuracy (another prompt of the task) |\n|---|---|---|")
    own_all, other_all = [], []
    for task, task_items in by_task.items():
        own = other = total = 0
        for i, item in enumerate(task_items):
            mismatched = task_items[(i + 1) % len(task_items)]
            generators = [torch.Generator().manual_seed(1000 * item.index + n) for n in range(args.images_per_prompt)]
            images = adapter.sample([item.prompt] * args.images_per_prompt, steps=defaults.get("num_inference_steps", 20),
                                    guidance_scale=defaults.get("guidance_scale", 4.5), generator=generators).media
            own += sum(v.correct for v in judge.judge_batch(images, [item.metadata] * len(images)))
            other += sum(v.correct for v in judge.judge_batch(images, [mismatched.metadata] * len(images)))
            total += len(images)
        own_all.append(own / total)
        other_all.append(other / total)
        print(f"| {task} | {own / total:.3f} | {other / total:.3f} |")
    print(f"| **overall** | {sum(own_all) / len(own_all):.3f} | {sum(other_all) / len(other_all):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
