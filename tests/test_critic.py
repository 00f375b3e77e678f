"""The MLLM critic: a tiny random Qwen2-VL in-process, and an OpenAI-compatible endpoint on 127.0.0.1."""
from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign import scorers
from diffalign.media import to_uint8
from diffalign.media import even_frames
from diffalign.scorers.critic import DEFAULT_TEMPLATES, CriticTemplates, MLLMCritic
from diffalign.scorers.critic_backends import CriticEndpointError
from tests.tiny.vlm import build_qwen2_vl


# -- local model --------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["2", "2.5"], ids=["qwen2-vl", "qwen2.5-vl"])
def tiny_vlm(request, tmp_path_factory):
    return build_qwen2_vl(tmp_path_factory.mktemp(f"tiny-qwen{request.param}-vl"), version=request.param)


@pytest.fixture(scope="module")
def reference(tiny_vlm):
    """The same checkpoint loaded independently of the critic, for unbatched reference forwards."""
    import transformers

    family = json.loads((tiny_vlm / "config.json").read_text())["model_type"]
    model_cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration, "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[family]
    model = model_cls.from_pretrained(tiny_vlm).eval()
    processor = transformers.AutoProcessor.from_pretrained(tiny_vlm)
    return model, processor


def reference_probability(reference, media: list[torch.Tensor], kind: str, question: str, answers: tuple[str, str]) -> float:
    """softmax([logit(answer0), logit(answer1)])[0] at the position after the assistant prompt, one item, no padding."""
    model, processor = reference
    content = [{"type": kind} for _ in media] + [{"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    uint8 = [to_uint8(m) for m in media]
    inputs = processor(text=[text], return_tensors="pt", **({"images": uint8} if kind == "image" else {"videos": uint8}))
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    ids = [processor.tokenizer.convert_tokens_to_ids(a) for a in answers]
    return torch.softmax(logits[ids], dim=0)[0].item()


def test_local_pointwise_is_softmax_of_yes_no_logits(tiny_vlm, reference):
    critic = scorers.load("critic", model=str(tiny_vlm), batch_size=2)
    assert isinstance(critic, MLLMCritic) and not critic.differentiable
    assert type(critic.backend.model) is type(reference[0])  # the real loader picked the family from config.json
    images = torch.rand(3, 3, 56, 84)
    prompts = ["a red cat", "two blue dogs", "a green photo"]
    probabilities = critic(images, prompts)
    assert probabilities.shape == (3,) and probabilities.dtype == torch.float32
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    expected = [
        reference_probability(reference, [image], "image", DEFAULT_TEMPLATES.pointwise.format(prompt=p, medium="image"), ("Yes", "No"))
        for image, p in zip(images, prompts)
    ]
    torch.testing.assert_close(probabilities, torch.tensor(expected), atol=2e-5, rtol=0)
    assert probabilities.std() > 1e-3  # the inputs really change the answer
    assert critic.pointwise(images, prompts).sources == ["logits"] * 3


def test_local_pairwise_is_softmax_of_a_b_logits(tiny_vlm, reference):
    critic = scorers.load("critic", model=str(tiny_vlm), batch_size=4)
    first, second = torch.rand(2, 3, 56, 56), torch.rand(2, 3, 56, 56)
    prompts = ["a cat", "a dog"]
    probabilities = critic.compare(first, second, prompts)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    expected = [
        reference_probability(reference, [a, b], "image", DEFAULT_TEMPLATES.pairwise.format(prompt=p, medium="image"), ("A", "B"))
        for a, b, p in zip(first, second, prompts)
    ]
    torch.testing.assert_close(probabilities, torch.tensor(expected), atol=2e-5, rtol=0)

    swapped = critic.compare(second, first, prompts)
    debiased = MLLMCritic(backend=critic.backend, debias_order=True).compare(first, second, prompts)
    torch.testing.assert_close(debiased, 0.5 * (probabilities + 1 - swapped))


def test_local_video_is_judged_whole_from_even_frames(tiny_vlm, reference):
    critic = scorers.load("critic", model=str(tiny_vlm), video_frames=4)
    videos = torch.rand(2, 7, 3, 56, 56)
    probabilities = critic(videos, ["a cat running", "a dog walking"])
    question = DEFAULT_TEMPLATES.pointwise.format(prompt="a cat running", medium="video")
    frames = even_frames(videos[0], 4)
    assert frames.shape[0] == 4 and torch.equal(frames[0], videos[0, 0]) and torch.equal(frames[-1], videos[0, -1])
    expected = reference_probability(reference, [frames], "video", question, ("Yes", "No"))
    assert probabilities[0].item() == pytest.approx(expected, abs=2e-5)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_local_rejects_multi_token_answers_and_bad_templates(tiny_vlm):
    critic = scorers.load("critic", model=str(tiny_vlm), templates={"pointwise_answers": ("Absolutely", "No")})
    with pytest.raises(ValueError, match="'Absolutely' is .* tokens"):
        critic(torch.rand(1, 3, 56, 56), ["a cat"])
    with pytest.raises(ValueError, match="unknown critic template field"):
        MLLMCritic(model=str(tiny_vlm), templates={"pointwse": "typo"})
    with pytest.raises(ValueError, match="model= .* url= .* backend="):
        MLLMCritic()


# -- OpenAI-compatible endpoint ---------------------------------------------------------------------
class FakeChatServer:
    """A chat-completions server on 127.0.0.1 that records requests and answers from ``reply(body)``."""

    def __init__(self, reply, delay: float = 0.0, statuses: list[int] | None = None):
        self.reply, self.delay, self.statuses = reply, delay, list(statuses or [])
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "served-critic", "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                if server.delay:
                    time.sleep(server.delay)
                if server.statuses:
                    status = server.statuses.pop(0)
                    if status != 200:
                        return self._send(status, {"error": {"message": f"status {status}"}})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                self._send(200, server.reply(body))

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(token: str, top: dict[str, float] | None) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": token}, "finish_reason": "length"}
    if top is not None:
        choice["logprobs"] = {
            "content": [
                {"token": token, "logprob": top.get(token, -9.0), "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()]}
            ]
        }
    return {"id": "x", "object": "chat.completion", "model": "served-critic", "choices": [choice]}


def images_of(body: dict) -> list[np.ndarray]:
    arrays = []
    for part in body["messages"][-1]["content"]:
        if part["type"] == "image_url":
            header, data = part["image_url"]["url"].split(",", 1)
            assert header == "data:image/png;base64"
            arrays.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))))
    return arrays


def question_of(body: dict) -> str:
    return [p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text"][0]


# log-probs the fake server returns, keyed by the prompt inside the question
POINTWISE_LOGPROBS = {"a cat": {"Yes": -0.25, "No": -1.6, "Maybe": -4.0}, "a dog": {"No": -0.1, "Yes": -2.4}}
PAIRWISE_LOGPROBS = {"a cat": {"B": -0.4, "A": -1.2}, "a dog": {"A": -0.05, "B": -3.1, "C": -5.0}}


def scripted_reply(body: dict) -> dict:
    question = question_of(body)
    table = PAIRWISE_LOGPROBS if "A or B" in question else POINTWISE_LOGPROBS
    top = next(v for k, v in table.items() if f'"{k}"' in question)
    return completion(max(top, key=top.get), top)


def softmax_first(table: dict[str, float], answers: tuple[str, str]) -> float:
    a, b = (math.exp(table[x]) for x in answers)
    return a / (a + b)


def test_http_pointwise_and_pairwise_are_softmax_of_logprobs(monkeypatch):
    monkeypatch.setenv("CRITIC_TEST_KEY", "sekrit")
    images = torch.rand(2, 3, 24, 32)
    others = torch.rand(2, 3, 24, 32)
    with FakeChatServer(scripted_reply) as server:
        critic = scorers.load("critic", url=server.url, api_key_env="CRITIC_TEST_KEY", top_logprobs=7, concurrency=2)
        pointwise = critic.pointwise(images, ["a cat", "a dog"])
        pairwise = critic.compare(images, others, ["a cat", "a dog"])
    expected_pointwise = [softmax_first(POINTWISE_LOGPROBS[p], ("Yes", "No")) for p in ("a cat", "a dog")]
    expected_pairwise = [softmax_first(PAIRWISE_LOGPROBS[p], ("A", "B")) for p in ("a cat", "a dog")]
    torch.testing.assert_close(pointwise.probabilities, torch.tensor(expected_pointwise))
    torch.testing.assert_close(pairwise, torch.tensor(expected_pairwise))
    assert pointwise.sources == ["logprobs", "logprobs"] and pointwise.exact

    assert len(server.requests) == 4
    for body, headers in zip(server.requests, server.headers):
        assert body["model"] == "served-critic"  # asked from /v1/models
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 7
        assert headers["Authorization"] == "Bearer sekrit"
    by_question = {question_of(b): b for b in server.requests}
    cat_pointwise = by_question[DEFAULT_TEMPLATES.pointwise.format(prompt="a cat", medium="image")]
    (sent,) = images_of(cat_pointwise)
    assert np.array_equal(sent, to_uint8(images[0]).permute(1, 2, 0).numpy())
    dog_pairwise = by_question[DEFAULT_TEMPLATES.pairwise.format(prompt="a dog", medium="image")]
    first, second = images_of(dog_pairwise)
    assert np.array_equal(first, to_uint8(images[1]).permute(1, 2, 0).numpy())
    assert np.array_equal(second, to_uint8(others[1]).permute(1, 2, 0).numpy())


def test_http_merges_answer_variants_and_bounds_a_missing_answer():
    replies = iter([
        completion("Yes", {"Yes": -0.7, " yes": -1.9, "No": -1.1}),
        completion("Yes", {"Yes": -0.1, "Sure": -2.5}),
    ])
    with FakeChatServer(lambda body: next(replies)) as server:
        critic = MLLMCritic(url=server.url, model="m", concurrency=1)
        result = critic.pointwise(torch.rand(2, 3, 8, 8), "a cat")
    merged = math.exp(-0.7) + math.exp(-1.9)
    assert result.probabilities[0].item() == pytest.approx(merged / (merged + math.exp(-1.1)), rel=1e-6)
    # "No" is not in the top-k: bounded by the smallest listed log-prob and by the mass left over
    no_bound = min(-2.5, math.log(1 - math.exp(-0.1) - math.exp(-2.5)))
    assert result.probabilities[1].item() == pytest.approx(1 / (1 + math.exp(no_bound + 0.1)), rel=1e-6)


def test_http_without_logprobs_falls_back_to_text_and_says_so(caplog):
    answers = iter(["No", "Yes.", "Perhaps"])
    with FakeChatServer(lambda body: completion(next(answers), None)) as server:
        critic = MLLMCritic(url=server.url, model="m", concurrency=1)
        result = critic.pointwise(torch.rand(3, 3, 8, 8), "a cat")
    assert result.probabilities[:2].tolist() == [0.0, 1.0] and math.isnan(result.probabilities[2].item())
    assert result.sources == ["text", "text", "unparsed"] and not result.exact
    assert "returned no logprobs for Yes/No" in caplog.text


def test_http_custom_templates_reach_the_endpoint():
    templates = CriticTemplates(pointwise="Rate {medium} for <{prompt}>: good or bad?", pointwise_answers=("good", "bad"))
    with FakeChatServer(lambda body: completion("bad", {"good": -2.0, "bad": -0.2})) as server:
        critic = MLLMCritic(url=server.url, model="m", templates=templates)
        probability = critic(torch.rand(1, 3, 8, 8), ["a dog"])
    assert question_of(server.requests[0]) == "Rate image for <a dog>: good or bad?"
    assert probability.item() == pytest.approx(1 / (1 + math.exp(1.8)), rel=1e-6)


def test_http_retries_transient_errors_then_succeeds():
    with FakeChatServer(lambda body: completion("Yes", {"Yes": -0.5, "No": -1.0}), statuses=[503, 500, 200]) as server:
        critic = MLLMCritic(url=server.url, model="m", retries=2, backoff=0.0)
        probability = critic(torch.rand(1, 3, 8, 8), ["a cat"])
    assert len(server.requests) == 3
    assert probability.item() == pytest.approx(1 / (1 + math.exp(-0.5)), rel=1e-6)


def test_http_client_error_is_not_retried():
    with FakeChatServer(lambda body: completion("Yes", None), statuses=[400]) as server:
        critic = MLLMCritic(url=server.url, model="m", retries=3, backoff=0.0)
        with pytest.raises(CriticEndpointError, match=r"/v1/chat/completions refused the request: HTTP 400"):
            critic(torch.rand(1, 3, 8, 8), ["a cat"])
    assert len(server.requests) == 1


def test_http_slow_server_fails_after_configured_retries():
    with FakeChatServer(lambda body: completion("Yes", {"Yes": -0.1}), delay=1.5) as server:
        critic = MLLMCritic(url=server.url, model="m", timeout=0.3, retries=2, backoff=0.0)
        started = time.monotonic()
        with pytest.raises(CriticEndpointError) as error:
            critic(torch.rand(1, 3, 8, 8), ["a cat"])
        elapsed = time.monotonic() - started
    message = str(error.value)
    assert server.url + "/chat/completions" in message and "3 attempt(s)" in message and "timeout 0.3s" in message
    assert len(server.requests) == 3
    assert elapsed < 1.5  # gave up at the timeout, did not wait for the slow answers


def test_http_unreachable_port_fails_after_configured_retries():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    critic = MLLMCritic(url=url, model="m", timeout=1.0, retries=1, backoff=0.0)
    with pytest.raises(CriticEndpointError, match=rf"critic endpoint {url}/chat/completions is down or too slow: no answer after 2 attempt"):
        critic(torch.rand(1, 3, 8, 8), ["a cat"])


def test_http_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("NO_SUCH_CRITIC_KEY", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_CRITIC_KEY"):
        MLLMCritic(url="http://127.0.0.1:1/v1", model="m", api_key_env="NO_SUCH_CRITIC_KEY")


def test_http_video_is_sent_as_its_even_frames():
    video = torch.rand(1, 9, 3, 8, 8)
    with FakeChatServer(lambda body: completion("Yes", {"Yes": -0.3, "No": -1.4})) as server:
        critic = MLLMCritic(url=server.url, model="m", video_frames=3)
        probability = critic(video, ["a cat running"])
    (body,) = server.requests
    assert question_of(body) == DEFAULT_TEMPLATES.pointwise.format(prompt="a cat running", medium="video")
    sent = images_of(body)
    assert len(sent) == 3
    for array, index in zip(sent, (0, 4, 8)):
        assert np.array_equal(array, to_uint8(video[0, index]).permute(1, 2, 0).numpy())
    assert probability.item() == pytest.approx(softmax_first({"Yes": -0.3, "No": -1.4}, ("Yes", "No")), rel=1e-6)
