"""The MLLM critic: a vision-language model asked two-way questions about generated media.

* **Pointwise** — "does this image match the prompt and look good? Yes or No" →
  ``P(Yes) = exp(l_Yes) / (exp(l_Yes) + exp(l_No))`` from the answer-token logits (VQAScore-style
  soft score; Lin et al. 2024). As a :class:`~diffalign.scorers.base.Scorer` the critic returns this.
* **Pairwise** — "the first is A, the second B: which is better? A or B" →
  ``P(A) = exp(l_A) / (exp(l_A) + exp(l_B))``, the probability that the first candidate is preferred
  (the labelling step of IPO-style iterative preference optimisation). MLLMs favour one position, so
  ``debias_order=True`` asks both orders and averages ``½ (P(A | a, b) + 1 − P(A | b, a))``.

Back-ends (``scorers/critic_backends.py``): a local transformers VLM (Qwen2-VL / Qwen2.5-VL via
``AutoModelForImageTextToText``; ``model="Qwen/Qwen2-VL-2B-Instruct"`` or a local folder) or an
OpenAI-compatible chat endpoint (``url="http://localhost:8000/v1"``, as served by vLLM or SGLang).
All question wording lives in :class:`CriticTemplates`; pass ``templates=`` to change it.

The critic is not differentiable (the answer is read after discrete tokenisation of the media).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from diffalign.media import check_media, even_frames
from diffalign.scorers.base import Prompts, Scorer, register_scorer
from diffalign.scorers.critic_backends import (
    CriticBackend,
    CriticEndpointError,
    CriticQuestion,
    Judgment,
    OpenAIChatBackend,
    TransformersVLMBackend,
)

__all__ = ["CriticTemplates", "CriticResult", "MLLMCritic", "CriticEndpointError", "DEFAULT_TEMPLATES"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CriticTemplates:
    """The critic's questions. ``{prompt}`` is the generation prompt, ``{medium}`` "image" or "video".

    The answer pairs must be single tokens of the local model's tokenizer; the first answer of each
    pair is the one whose probability is returned.
    """

    pointwise: str = (
        'The {medium} was generated for the prompt: "{prompt}"\n'
        "Does the {medium} match the prompt and look good? Answer with Yes or No."
    )
    pairwise: str = (
        'Both {medium}s were generated for the prompt: "{prompt}"\n'
        "The first {medium} is A and the second {medium} is B. Which one matches the prompt better "
        "and looks better? Answer with A or B."
    )
    pointwise_answers: tuple[str, str] = ("Yes", "No")
    pairwise_answers: tuple[str, str] = ("A", "B")
    system: str | None = None

    @classmethod
    def from_options(cls, templates: CriticTemplates | dict | None) -> CriticTemplates:
        if templates is None:
            return DEFAULT_TEMPLATES
        if isinstance(templates, CriticTemplates):
            return templates
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(templates) - known
        if unknown:
            raise ValueError(f"unknown critic template field(s) {sorted(unknown)}; known: {sorted(known)}")
        values = {k: tuple(v) if k.endswith("_answers") else v for k, v in templates.items()}
        return dataclasses.replace(DEFAULT_TEMPLATES, **values)


DEFAULT_TEMPLATES = CriticTemplates()


@dataclass
class CriticResult:
    """Probabilities of the first answer (``B``), and per item where each came from.

    ``sources[i]`` is ``"logits"`` (local model), ``"logprobs"`` (endpoint top-logprobs), ``"text"``
    (endpoint gave no logprobs: the text answer read as 1 or 0) or ``"unparsed"`` (NaN).
    """

    probabilities: torch.Tensor
    sources: list[str]
    answers: list[str | None]

    @property
    def exact(self) -> bool:
        """True when every probability came from logits or log-probabilities, none from parsed text."""
        return all(source in ("logits", "logprobs") for source in self.sources)


@register_scorer("critic")
class MLLMCritic(Scorer):
    """Pointwise and pairwise judgments of a vision-language model, as probabilities.

    Exactly one of: ``model`` (hub id or local folder of a transformers VLM, run in-process),
    ``url`` (OpenAI-compatible endpoint; then ``model`` is the served model name, asked from
    ``/v1/models`` when omitted), or ``backend`` (a ready :class:`CriticBackend`).
    Other keyword options go to the back-end (e.g. ``dtype``, ``processor_options`` for the local
    model; ``timeout``, ``retries``, ``backoff``, ``api_key_env``, ``top_logprobs``,
    ``concurrency`` for the endpoint). Videos are shown as ``video_frames`` evenly spaced frames.
    """

    name = "critic"
    modality = "image"
    differentiable = False

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        url: str | None = None,
        backend: CriticBackend | None = None,
        templates: CriticTemplates | dict | None = None,
        batch_size: int = 4,
        video_frames: int | None = 8,
        debias_order: bool = False,
        device: str | torch.device | None = None,
        **backend_options: Any,
    ):
        super().__init__(batch_size=batch_size)
        if backend is None:
            if url is not None:
                backend = OpenAIChatBackend(url, model=None if model is None else str(model), **backend_options)
            elif model is not None:
                backend = TransformersVLMBackend(model, batch_size=self.batch_size, device=device, **backend_options)
            else:
                raise ValueError("the critic needs model= (local VLM), url= (OpenAI-compatible endpoint) or backend=")
        elif model is not None or url is not None or backend_options:
            raise ValueError("pass either backend= or model=/url= with their options, not both")
        self.backend = backend
        self.templates = CriticTemplates.from_options(templates)
        self.video_frames = video_frames
        self.debias_order = bool(debias_order)

    # -- questions -------------------------------------------------------------------------------
    def _items(self, media: torch.Tensor) -> tuple[str, list[torch.Tensor]]:
        modality = check_media(media)
        items = [item.detach() for item in media]
        if modality == "video":
            items = [even_frames(item, self.video_frames) for item in items]
        return modality, items

    @staticmethod
    def _prompts(prompts: str | Sequence[str] | None, count: int) -> list[str]:
        if prompts is None:
            return [""] * count
        if isinstance(prompts, str):
            return [prompts] * count
        prompts = list(prompts)
        if len(prompts) != count:
            raise ValueError(f"got {len(prompts)} prompts for {count} media items")
        return prompts

    def _ask(self, questions: list[CriticQuestion], device: torch.device) -> CriticResult:
        judgments: list[Judgment] = self.backend.judge(questions)
        result = CriticResult(
            torch.tensor([j.probability for j in judgments], dtype=torch.float32, device=device),
            [j.source for j in judgments],
            [j.answer_text for j in judgments],
        )
        if not result.exact:
            inexact = sum(s not in ("logits", "logprobs") for s in result.sources)
            logger.warning("critic: %d of %d answers came without answer probabilities (see CriticResult.sources)",
                           inexact, len(judgments))
        return result

    def pointwise(self, media: torch.Tensor, prompts: str | Sequence[str] | None = None) -> CriticResult:
        """P(first pointwise answer, "Yes") for each image or video of ``media``."""
        modality, items = self._items(media)
        template = self.templates
        questions = [
            CriticQuestion([item], template.pointwise.format(prompt=prompt, medium=modality), template.pointwise_answers, template.system)
            for item, prompt in zip(items, self._prompts(prompts, len(items)))
        ]
        return self._ask(questions, media.device)

    def pairwise(
        self, media_a: torch.Tensor, media_b: torch.Tensor, prompts: str | Sequence[str] | None = None
    ) -> CriticResult:
        """P(``media_a[i]`` is preferred to ``media_b[i]``) for each pair (both orders if ``debias_order``)."""
        modality_a, items_a = self._items(media_a)
        modality_b, items_b = self._items(media_b)
        if modality_a != modality_b or len(items_a) != len(items_b):
            raise ValueError(
                f"pairwise media must match: got {len(items_a)} {modality_a}s and {len(items_b)} {modality_b}s"
            )
        template = self.templates
        prompts = self._prompts(prompts, len(items_a))

        def questions(first: list[torch.Tensor], second: list[torch.Tensor]) -> list[CriticQuestion]:
            return [
                CriticQuestion([x, y], template.pairwise.format(prompt=p, medium=modality_a), template.pairwise_answers, template.system)
                for x, y, p in zip(first, second, prompts)
            ]

        forward = self._ask(questions(items_a, items_b), media_a.device)
        if not self.debias_order:
            return forward
        backward = self._ask(questions(items_b, items_a), media_a.device)
        return CriticResult(
            0.5 * (forward.probabilities + 1.0 - backward.probabilities),
            [f if f == b else f"{f}+{b}" for f, b in zip(forward.sources, backward.sources)],
            [f"{fa}|{ba}" for fa, ba in zip(forward.answers, backward.answers)],
        )

    def compare(self, media_a: torch.Tensor, media_b: torch.Tensor, prompts: str | Sequence[str] | None = None) -> torch.Tensor:
        """``Tensor[B]``: probability that the first of each pair is better."""
        return self.pairwise(media_a, media_b, prompts).probabilities

    # -- Scorer ------------------------------------------------------------------------------------
    def forward(self, media: torch.Tensor, prompts: Prompts = None) -> torch.Tensor:
        """Pointwise probabilities; a video is judged whole (as frames in one question), not frame by frame."""
        if check_media(media) == "video":
            prompts = self.check_prompts(prompts, media.shape[0])
            if media.shape[0] == 0:
                return torch.zeros(0, dtype=torch.float32, device=media.device)
            return self._chunked(self.score_videos, media, prompts).to(media.device)
        return super().forward(media, prompts)

    def score_images(self, images: torch.Tensor, prompts: Sequence[str] | None) -> torch.Tensor:
        return self.pointwise(images, prompts).probabilities

    def score_videos(self, videos: torch.Tensor, prompts: Sequence[str] | None) -> torch.Tensor:
        return self.pointwise(videos, prompts).probabilities

    def extra_repr(self) -> str:
        return f"backend={type(self.backend).__name__}, debias_order={self.debias_order}, video_frames={self.video_frames}"

