"""Back-ends that answer the MLLM critic's two-way questions with a probability.

A back-end receives :class:`CriticQuestion` s (media items, a question, and the two answer words,
e.g. ``("Yes", "No")`` or ``("A", "B")``) and returns one :class:`Judgment` each: the probability
that the *first* answer is the model's answer, restricted to the two answers,

    p = exp(l₁) / (exp(l₁) + exp(l₂)) = sigmoid(l₁ − l₂),

where lᵢ is the answer token's logit (local model) or log-probability (HTTP endpoint) at the first
generated position. This is the soft "P(Yes)" of VQAScore, and for pairwise questions the
probability that the first candidate is preferred.

* :class:`TransformersVLMBackend` runs a vision-language model in-process (Qwen2-VL / Qwen2.5-VL
  and other chat-template VLMs through ``AutoModelForImageTextToText``): one batched forward pass,
  logits read at the last (answer) position.
* :class:`OpenAIChatBackend` asks an OpenAI-compatible chat-completions endpoint (vLLM, SGLang,
  hosted APIs) for one token with ``logprobs``; standard library HTTP only.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from diffalign.media import check_media, tensor_to_pil, to_uint8
from diffalign.scorers.base import freeze, resolve_dtype

logger = logging.getLogger(__name__)

#: Where a probability came from: exact answer-token logits, endpoint top-logprobs, a parsed text
#: answer (probability 1 or 0: the endpoint returned no logprobs), or nothing usable (NaN).
SOURCES = ("logits", "logprobs", "text", "unparsed")


class CriticEndpointError(RuntimeError):
    """The critic's HTTP endpoint could not be reached, answered too slowly, or refused the request."""


@dataclass
class CriticQuestion:
    """One two-way question about one or more media items.

    ``media`` holds ``3×H×W`` images or ``T×3×H×W`` videos in [0, 1], shown in order before ``text``.
    """

    media: list[torch.Tensor]
    text: str
    answers: tuple[str, str]
    system: str | None = None


@dataclass
class Judgment:
    """The probability of ``answers[0]``, where it came from, and the raw answer text if any."""

    probability: float
    source: str
    answer_text: str | None = None


def two_way_probability(first: float | torch.Tensor, second: float | torch.Tensor):
    """``exp(first) / (exp(first) + exp(second))`` for logits or log-probs, computed stably."""
    if isinstance(first, torch.Tensor):
        return torch.sigmoid(first - second)
    if first == -math.inf and second == -math.inf:
        return math.nan
    return 1.0 / (1.0 + math.exp(min(second - first, 700.0)))


class CriticBackend:
    """Answers :class:`CriticQuestion` s; subclasses implement :meth:`judge`."""

    def judge(self, questions: Sequence[CriticQuestion]) -> list[Judgment]:
        raise NotImplementedError


def _chat_messages(question: CriticQuestion, media_parts: list[dict]) -> list[dict]:
    messages = []
    if question.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": question.system}]})
    messages.append({"role": "user", "content": [*media_parts, {"type": "text", "text": question.text}]})
    return messages


class TransformersVLMBackend(nn.Module, CriticBackend):
    """A local vision-language model answering with one forward pass per batch of questions.

    ``model`` is a hub id, a local folder, or an already-loaded model (then pass ``processor``).
    Prompts are built with the processor's chat template, padded on the left so that the last
    position of every row is where the answer token would be generated; the answer words must each
    be a single token of the model's tokenizer. Videos go to the processor as frame tensors.
    """

    def __init__(
        self,
        model: str | Path | nn.Module,
        processor: Any | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        processor_options: dict | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = resolve_dtype(dtype)
        if isinstance(model, (str, Path)):
            source = str(model)
            load_options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
            if dtype is not None:
                load_options["dtype"] = dtype
            if attn_implementation is not None:
                load_options["attn_implementation"] = attn_implementation
            model = AutoModelForImageTextToText.from_pretrained(source, **load_options)
            if processor is None:
                processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code, **(processor_options or {}))
        elif processor is None:
            raise ValueError("pass `processor` together with an already-loaded model")
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"the processor of {getattr(model, 'name_or_path', model)!r} has no chat template; the critic needs one")
        self.model = freeze(model, device=device)
        self.processor = processor
        self.batch_size = int(batch_size)
        self._answer_ids: dict[tuple[str, str], tuple[int, int]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def answer_token_ids(self, answers: tuple[str, str]) -> tuple[int, int]:
        """The single token id of each answer word; a clear error if a word is several tokens."""
        if answers not in self._answer_ids:
            tokenizer = self.processor.tokenizer
            ids = []
            for word in answers:
                pieces = tokenizer.encode(word, add_special_tokens=False)
                if len(pieces) != 1:
                    raise ValueError(
                        f"critic answer {word!r} is {len(pieces)} tokens {pieces} for this tokenizer; "
                        "choose answer words that are single tokens"
                    )
                ids.append(pieces[0])
            if ids[0] == ids[1]:
                raise ValueError(f"critic answers {answers} map to the same token")
            self._answer_ids[answers] = (ids[0], ids[1])
        return self._answer_ids[answers]

    def prepare(self, questions: Sequence[CriticQuestion]) -> dict[str, torch.Tensor]:
        """Processor inputs for a batch of questions (left-padded, on the model's device)."""
        texts, images, videos = [], [], []
        for question in questions:
            parts = []
            for item in question.media:
                if check_media(item[None]) == "image":
                    parts.append({"type": "image"})
                    images.append(to_uint8(item).cpu())
                else:
                    parts.append({"type": "video"})
                    videos.append(to_uint8(item).cpu())
            texts.append(
                self.processor.apply_chat_template(_chat_messages(question, parts), tokenize=False, add_generation_prompt=True)
            )
        inputs = self.processor(
            text=texts,
            images=images or None,
            videos=videos or None,
            return_tensors="pt",
            padding=True,
            padding_side="left",
        )
        if "attention_mask" in inputs and not bool(inputs["attention_mask"][:, -1].all()):
            raise RuntimeError("the processor did not pad on the left; cannot read the answer position")
        dtype = next(self.model.parameters()).dtype
        return {
            key: value.to(self.device, dtype=dtype if value.is_floating_point() else None)
            for key, value in inputs.items()
            if isinstance(value, torch.Tensor)
        }

    @torch.no_grad()
    def answer_logits(self, questions: Sequence[CriticQuestion]) -> torch.Tensor:
        """Next-token logits at the answer position, ``len(questions) × vocab``, float32."""
        inputs = self.prepare(questions)
        output = self.model(**inputs, logits_to_keep=1, use_cache=False)
        return output.logits[:, -1].float()

    def judge(self, questions: Sequence[CriticQuestion]) -> list[Judgment]:
        judgments: list[Judgment] = []
        for start in range(0, len(questions), self.batch_size):
            chunk = questions[start : start + self.batch_size]
            logits = self.answer_logits(chunk)
            for row, question in zip(logits, chunk):
                first, second = self.answer_token_ids(question.answers)
                probability = float(two_way_probability(row[first], row[second]))
                judgments.append(Judgment(probability, "logits"))
        return judgments


class OpenAIChatBackend(CriticBackend):
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, hosted APIs).

    Each question is one request: media as base64 data URLs (a video as its frames, in order),
    ``max_tokens=1``, ``temperature=0``, ``logprobs=true`` and
    ``top_logprobs=k``. The answer probability uses the log-probabilities of the answer tokens among
    the top ``k`` (tokens matching an answer after stripping spaces, case-insensitively, are summed).
    When one answer is missing from the top ``k`` its log-probability is bounded by both the smallest
    listed one and the mass left over, and that bound is used. When the endpoint returns no logprobs
    the text answer is parsed as probability 1 or 0 (``source="text"``, logged as a warning).

    Network failures, timeouts, HTTP 408/429/5xx are retried ``retries`` times with exponential
    backoff (``backoff · 2^attempt`` seconds); then :class:`CriticEndpointError` names the URL.
    The API key, if any, is read from the environment variable named by ``api_key_env``.
    """

    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 1.0,
        top_logprobs: int = 5,
        concurrency: int = 4,
        image_format: str = "png",
        extra_body: dict | None = None,
    ):
        self.base_url, self.endpoint = self._urls(url)
        self.api_key_env = api_key_env
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ValueError(f"critic endpoint {self.endpoint}: environment variable {api_key_env} (the API key) is not set")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.top_logprobs = int(top_logprobs)
        self.concurrency = max(1, int(concurrency))
        self.image_format = image_format.lower().replace("jpg", "jpeg")
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
        self.extra_body = dict(extra_body or {})
        self._model = model

    @staticmethod
    def _urls(url: str) -> tuple[str, str]:
        url = url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url[: -len("/chat/completions")], url
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"critic url must look like http://host:port/v1, got {url!r}")
        if parsed.path in ("", "/"):
            url = url + "/v1"
        return url, url + "/chat/completions"

    # -- HTTP -------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env is not None:
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        return headers

    def _request(self, url: str, body: dict | None = None) -> dict:
        """GET (``body`` None) or POST JSON, with retries; returns the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        last_error: BaseException | None = None
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=self._headers(), method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")[:500]
                if err.code not in self.RETRY_STATUS:
                    raise CriticEndpointError(f"critic endpoint {url} refused the request: HTTP {err.code} {detail}") from err
                last_error = err
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last_error = err
            except json.JSONDecodeError as err:
                raise CriticEndpointError(f"critic endpoint {url} did not answer with JSON: {err}") from err
            logger.debug("critic endpoint %s attempt %d/%d failed: %s", url, attempt + 1, attempts, last_error)
        reason = getattr(last_error, "reason", last_error)
        raise CriticEndpointError(
            f"critic endpoint {url} is down or too slow: no answer after {attempts} attempt(s) "
            f"(timeout {self.timeout:g}s each): {type(reason).__name__}: {reason}"
        ) from last_error

    @property
    def model(self) -> str:
        """The served model name; asked from ``GET /v1/models`` when not given."""
        if self._model is None:
            listing = self._request(self.base_url + "/models")
            try:
                self._model = listing["data"][0]["id"]
            except (KeyError, IndexError, TypeError) as err:
                raise CriticEndpointError(f"critic endpoint {self.base_url}/models lists no model; pass model=") from err
        return self._model

    # -- requests and answers -----------------------------------------------------------------
    def _data_url(self, image: torch.Tensor) -> str:
        buffer = io.BytesIO()
        tensor_to_pil(image)[0].save(buffer, format=self.image_format.upper())
        return f"data:image/{self.image_format};base64,{base64.b64encode(buffer.getvalue()).decode()}"

    def request_body(self, question: CriticQuestion) -> dict:
        parts = []
        for item in question.media:
            frames = [item] if check_media(item[None]) == "image" else list(item)
            parts += [{"type": "image_url", "image_url": {"url": self._data_url(frame)}} for frame in frames]
        body = {
            "model": self.model,
            "messages": _chat_messages(question, parts),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        body.update(self.extra_body)
        return body

    def parse(self, response: dict, answers: tuple[str, str]) -> Judgment:
        """Turn one chat-completions answer into a :class:`Judgment` for ``answers``."""
        try:
            choice = response["choices"][0]
        except (KeyError, IndexError, TypeError) as err:
            raise CriticEndpointError(f"critic endpoint {self.endpoint} answered without choices: {str(response)[:300]}") from err
        text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        content = (choice.get("logprobs") or {}).get("content") or []
        if content:
            first = content[0]
            candidates = {first.get("token", ""): first.get("logprob", -math.inf)}
            for entry in first.get("top_logprobs") or []:
                candidates[entry["token"]] = entry["logprob"]
            judgment = _judgment_from_logprobs(candidates, answers, text)
            if judgment is not None:
                return judgment
        judgment = _judgment_from_text(text, answers)
        if judgment.source == "text":
            logger.warning("critic endpoint %s returned no logprobs for %s/%s; using the text answer %r as probability %g",
                           self.endpoint, *answers, text, judgment.probability)
        else:
            logger.warning("critic endpoint %s answered %r, which is neither %s nor %s", self.endpoint, text, *answers)
        return judgment

    def _ask(self, question: CriticQuestion) -> Judgment:
        return self.parse(self._request(self.endpoint, self.request_body(question)), question.answers)

    def judge(self, questions: Sequence[CriticQuestion]) -> list[Judgment]:
        if not questions:
            return []
        self.model  # resolve the model name once, not in every thread
        if self.concurrency == 1 or len(questions) == 1:
            return [self._ask(q) for q in questions]
        with ThreadPoolExecutor(min(self.concurrency, len(questions))) as pool:
            return list(pool.map(self._ask, questions))


def _matches(token: str, answer: str) -> bool:
    return token.strip().casefold() == answer.strip().casefold()


def _logsumexp(values: list[float]) -> float:
    values = [v for v in values if v != -math.inf]
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _judgment_from_logprobs(candidates: dict[str, float], answers: tuple[str, str], text: str) -> Judgment | None:
    scores = [_logsumexp([lp for token, lp in candidates.items() if _matches(token, answer)]) for answer in answers]
    if all(s == -math.inf for s in scores):
        return None
    if any(s == -math.inf for s in scores):
        # the other answer is below the top-k: bound it by the smallest listed log-prob and the mass left
        listed = [lp for lp in candidates.values() if lp != -math.inf]
        leftover = max(1.0 - sum(math.exp(lp) for lp in listed), 1e-12)
        bound = min(min(listed), math.log(leftover))
        scores = [bound if s == -math.inf else s for s in scores]
    return Judgment(two_way_probability(scores[0], scores[1]), "logprobs", text)


def _judgment_from_text(text: str, answers: tuple[str, str]) -> Judgment:
    words = text.strip().split()
    word = words[0].strip(".,:;!?\"'()*") if words else ""
    for index, answer in enumerate(answers):
        if _matches(word, answer):
            return Judgment(1.0 if index == 0 else 0.0, "text", text)
    return Judgment(math.nan, "unparsed", text)

