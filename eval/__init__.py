"""Benchmarks: prompt suite + sampling protocol + judge -> one JSONL row per sample and a summary.

* :mod:`diffalign.eval.benchmark`: the generic pieces (:class:`Benchmark`, :func:`run_benchmark`).
* :mod:`diffalign.eval.shapes_eval`: ShapesEval, GenEval's tasks on ShapesWorld with an exact judge.
* :mod:`diffalign.eval.geneval`: GenEval (rule engine, Mask2Former detector, CLIP colours, harness).
"""
from __future__ import annotations

from .benchmark import Benchmark, BenchmarkError, Judgement, PromptItem, SamplingProtocol, load_prompt_suite, run_benchmark
from .shapes_eval import GroundTruthSampler, build_prompt_suite, run_shapes_eval, shapes_eval_benchmark

__all__ = [
    "Benchmark", "BenchmarkError", "GroundTruthSampler", "Judgement", "PromptItem", "SamplingProtocol",
    "build_prompt_suite", "load_prompt_suite", "run_benchmark", "run_shapes_eval", "shapes_eval_benchmark",
]
