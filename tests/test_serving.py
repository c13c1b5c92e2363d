"""`llm2comp serve`: OpenAI-compatible responses equal to encode, request isolation under dynamic batching, every
bad input answered with OpenAI's error shape (and the server keeps serving), a dropped client, graceful SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from llm2comp import LLM2Comp  # noqa: E402
from llm2comp.serving import TRUNCATED_HEADER, create_app  # noqa: E402
from llm2comp.testing import SAMPLE_TEXT  # noqa: E402

KEY = "secret-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tiny_dir):
    return LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, max_length=48)


@pytest.fixture(scope="module")
def server(model):
    port = _free_port()
    app = create_app(model, "tiny", max_batch_size=16, max_wait_ms=30, api_key=KEY, max_items=8, max_body_bytes=4096)
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    assert instance.started
    yield {"url": f"http://127.0.0.1:{port}", "app": app}
    instance.should_exit = True
    thread.join(timeout=10)


def _post(url, payload, key=KEY, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(url + "/v1/embeddings", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def _rows(body) -> np.ndarray:
    return np.array([item["embedding"] for item in sorted(body["data"], key=lambda d: d["index"])], dtype=np.float32)


def test_responses_equal_encode_in_both_formats(server, model):
    texts = SAMPLE_TEXT[:5]
    expected = model.encode(texts, normalize_embeddings=True)
    status, body, _ = _post(server["url"], {"input": texts, "model": "tiny"})
    assert status == 200 and body["object"] == "list" and body["model"] == "tiny"
    np.testing.assert_allclose(_rows(body), expected, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == sum(len(r) for r in model.token_ids(texts)) == body["usage"]["total_tokens"]
    status, body, _ = _post(server["url"], {"input": texts, "encoding_format": "base64"})
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])
    np.testing.assert_allclose(decoded, expected, atol=1e-5)
    status, body, _ = _post(server["url"], {"input": texts[0]})  # a single string
    np.testing.assert_allclose(_rows(body)[0], expected[0], atol=1e-5)


def test_each_request_is_tokenized_once(server, model, monkeypatch):
    # the token rows that give the usage count and the truncation report are the rows the model embeds
    calls = []
    token_ids = model.token_ids
    monkeypatch.setattr(model, "token_ids", lambda texts, *a: calls.append(len(texts)) or token_ids(texts, *a))
    status, body, _ = _post(server["url"], {"input": SAMPLE_TEXT[:3], "model": "tiny"})
    assert status == 200 and calls == [3]
    monkeypatch.undo()
    np.testing.assert_allclose(_rows(body), model.encode(SAMPLE_TEXT[:3], normalize_embeddings=True), atol=1e-5)


def test_the_official_openai_client_works_unchanged(server, model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY)
    texts = SAMPLE_TEXT[:3]
    response = client.embeddings.create(input=texts, model="tiny")  # the client asks for base64 by default
    np.testing.assert_allclose(np.array([d.embedding for d in response.data]), model.encode(texts, normalize_embeddings=True), atol=1e-5)
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong").embeddings.create(input="x", model="tiny")


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, model):
    metrics = server["app"].state.metrics
    batches_before, requests_before = metrics.batches, metrics.requests.get(200, 0)
    requests = [[f"{SAMPLE_TEXT[i % len(SAMPLE_TEXT)]} number {i} {j}" for j in range(1 + i % 3)] for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda texts: _post(server["url"], {"input": texts}), requests))
    for texts, (status, body, _) in zip(requests, answers):
        assert status == 200
        np.testing.assert_allclose(_rows(body), model.encode(texts, normalize_embeddings=True), atol=1e-5)
    assert metrics.requests[200] - requests_before == 32
    assert metrics.batches - batches_before < 32  # requests shared model batches
    with urllib.request.urlopen(server["url"] + "/metrics") as response:
        text = response.read().decode()
    assert 'llm2comp_requests_total{status="200"}' in text and "llm2comp_batches_total" in text


@pytest.mark.parametrize("payload, status, code_or_param", [
    ({"input": []}, 400, "input"),
    ({"input": ["ok", 3]}, 400, "input"),
    ({"input": [[1, 2, 3]]}, 400, "input"),
    ({"input": ["x"] * 9}, 400, "input"),  # max_items=8
    ({"texts": ["x"]}, 400, "input"),
    ({"input": ["x"], "model": "other"}, 404, "model_not_found"),
    ({"input": ["x"], "dimensions": 7}, 400, "dimensions"),
    ({"input": ["x"], "encoding_format": "int8"}, 400, "encoding_format"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, payload, status, code_or_param):
    got, body, _ = _post(server["url"], payload)
    assert got == status
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert code_or_param in (error["code"], error["param"])
    assert _post(server["url"], {"input": ["still serving"]})[0] == 200


def test_key_body_size_json_and_truncation(server, model):
    assert _post(server["url"], {"input": ["x"]}, key=None)[:1] == (401,)
    status, body, _ = _post(server["url"], {"input": ["x"]}, key="wrong")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert _post(server["url"], {"input": ["word " * 2000]})[0] == 413  # 10 kB body, limit 4096 bytes
    assert _post(server["url"], None, raw=b"{not json")[0] == 400
    long_text = " ".join(SAMPLE_TEXT)  # over max_length=48 tokens: truncated as encode does, and said so
    truncated_before = server["app"].state.metrics.truncated
    status, body, headers = _post(server["url"], {"input": [long_text, "short"]})
    assert status == 200 and headers[TRUNCATED_HEADER] == "1" and body["truncated_inputs"] == 1
    assert server["app"].state.metrics.truncated - truncated_before == 1  # and counted in /metrics
    np.testing.assert_allclose(_rows(body), model.encode([long_text, "short"], normalize_embeddings=True), atol=1e-5)
    assert _post(server["url"], {"input": ["still serving"]})[0] == 200


def test_a_client_that_disconnects_mid_request_does_not_hurt_the_server(server):
    host, port = server["url"][7:].split(":")
    body = json.dumps({"input": SAMPLE_TEXT[:4]}).encode()
    for partial in (False, True):
        with socket.create_connection((host, int(port))) as raw:
            head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            raw.sendall(head + (body[: len(body) // 2] if partial else body))
        # closed right away: mid-body, or before the answer
    time.sleep(0.2)
    status, body, _ = _post(server["url"], {"input": ["after the dropped clients"]})
    assert status == 200 and len(body["data"]) == 1
    with urllib.request.urlopen(server["url"] + "/health") as response:
        assert json.loads(response.read())["status"] == "ok"


def test_sigterm_finishes_in_flight_requests(tiny_dir, tmp_path):
    saved = tmp_path / "model"
    LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3).save(saved)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "llm2comp", "serve", str(saved), "--port", str(port), "--name", "m",
                                "--max-wait-ms", "1500"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_post, url, {"input": ["in flight"]}, None)
            time.sleep(0.5)  # the request waits in the batcher (max wait 1.5 s) when the signal arrives
            process.send_signal(signal.SIGTERM)
            status, body, _ = pending.result(timeout=60)
        assert status == 200 and len(body["data"]) == 1
        # uvicorn re-raises the signal once it has shut down cleanly, so that supervisors see a SIGTERM exit
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Finished server process" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_the_batcher_takes_everything_already_waiting_even_past_its_wait_window():
    """Requests that queued while the model ran join the next batch without waiting: the wait window only bounds how
    long to wait for new arrivals (a saturated server used to miss them once the event loop spent the window on
    writing responses, and ran batches of two requests with thirty waiting)."""
    import asyncio

    from llm2comp.serving import DynamicBatcher

    class CountingModel:
        def __init__(self):
            self.batches: list[int] = []

        def encode_token_ids(self, token_ids, **kwargs):
            import torch

            self.batches.append(len(token_ids))
            return torch.ones(len(token_ids), 4)

    async def scenario():
        model = CountingModel()
        batcher = DynamicBatcher(model, max_batch_size=8, max_wait_ms=0.0)
        batcher.queue = asyncio.Queue()  # fill it before the worker starts: all of it is waiting at once
        answers = [asyncio.ensure_future(batcher.embed([[1, 2]] * n)) for n in (1, 2, 1, 3, 2, 1)]
        await asyncio.sleep(0)  # the requests are in the queue
        batcher.worker = asyncio.create_task(batcher._run())
        rows = await asyncio.gather(*answers)
        await batcher.stop()
        return model.batches, [len(r) for r in rows]

    batches, rows = asyncio.run(scenario())
    assert rows == [1, 2, 1, 3, 2, 1]
    assert batches == [9, 1]  # up to the limit (8 texts), the job that crosses it included; the rest next


# ---------------------------------------------------------------------------------------------- limits and failures
class _Running:
    """An app served by uvicorn in a thread for the length of a with-block."""

    def __init__(self, app):
        self.app, self.port = app, _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


class _GatedModel:
    """Wraps a model: every model batch waits for `gate` (so requests pile up), or raises when `fail` is set."""

    def __init__(self, model):
        self.model, self.gate, self.fail, self.config = model, threading.Event(), False, model.config
        self.backend = model.backend

    def __getattr__(self, name):
        return getattr(self.model, name)

    def encode_token_ids(self, token_ids, **kwargs):
        if self.fail:
            raise RuntimeError("the model broke")
        assert self.gate.wait(timeout=60)
        return self.model.encode_token_ids(token_ids, **kwargs)


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def test_more_requests_than_the_limit_get_429_and_none_is_lost(model):
    gated = _GatedModel(model)
    app = create_app(gated, "tiny", max_concurrent_requests=2, max_wait_ms=1)
    with _Running(app) as url, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_post, url, {"input": [f"text {i}"]}, None) for i in range(6)]
        deadline = time.time() + 30
        while app.state.metrics.requests.get(429, 0) < 4 and time.time() < deadline:
            time.sleep(0.05)
        gated.gate.set()
        answers = [f.result() for f in futures]
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200, 200, 429, 429, 429, 429]
        for status, body, headers in answers:
            if status == 429:
                assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded"
                assert headers["Retry-After"] == "1"
            else:
                assert len(body["data"]) == 1
        assert app.state.metrics.requests == {200: 2, 429: 4}
        assert _post(url, {"input": ["afterwards"]}, None)[0] == 200  # the slots were given back
        status, health, _ = _get(url + "/health")
        assert status == 200 and health["status"] == "ok" and health["in_flight"] == 0


def test_unexpected_failures_are_openai_errors_counted_and_health_says_when_it_cannot_serve(model):
    gated = _GatedModel(model)
    gated.gate.set()
    app = create_app(gated, "tiny")
    with _Running(app) as url:
        dim = model.get_sentence_embedding_dimension()
        status, body, _ = _post(url, {"input": ["x"], "dimensions": float(dim)}, None)  # 256.0 is not 256
        assert status == 400 and body["error"]["param"] == "dimensions"
        gated.fail = True
        status, body, _ = _post(url, {"input": ["x"]}, None)
        assert status == 500 and body["error"]["type"] == "server_error" and "RuntimeError" in body["error"]["message"]
        gated.fail = False
        status, body, _ = _get(url + "/no/such/route")
        assert status == 404 and body["error"]["code"] == "http_404"
        assert app.state.metrics.requests == {400: 1, 500: 1, 404: 1}
        assert "llm2comp_requests_total{status=\"500\"} 1" in urllib.request.urlopen(url + "/metrics").read().decode()
        assert _get(url + "/health")[0] == 200
        app.state.batcher.worker.cancel()  # the batcher is gone: health says so, requests are refused, not hung
        time.sleep(0.2)
        status, health, headers = _get(url + "/health")
        assert status == 503 and health["status"] == "unavailable" and "stopped" in health["reason"]
        status, body, _ = _post(url, {"input": ["x"]}, None)
        assert status == 503 and body["error"]["code"] == "unavailable"


def test_each_thread_tokenizes_with_its_own_tokenizer(model):
    from llm2comp.features import thread_tokenizer

    here = thread_tokenizer(model.tokenizer)
    assert thread_tokenizer(model.tokenizer) is here
    with ThreadPoolExecutor(2) as pool:
        theirs = set(map(id, pool.map(lambda _: thread_tokenizer(model.tokenizer), range(8))))
    assert id(here) not in theirs and 1 <= len(theirs) <= 2  # one copy per worker thread, made once
    texts = [" ".join(SAMPLE_TEXT)] * 3 + ["short"] * 3  # truncating and measuring, all at once: every row right
    expected = [model.token_ids([t]) for t in texts]
    with ThreadPoolExecutor(6) as pool:
        for _ in range(5):
            assert list(pool.map(lambda t: model.token_ids([t]), texts)) == expected
