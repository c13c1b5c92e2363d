"""`llm2comp serve`: an OpenAI-compatible embeddings server with dynamic batching.

Endpoints: ``POST /v1/embeddings`` (OpenAI's request and response, ``encoding_format`` float or base64),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text format).

Each request is tokenized once (in a thread: the token rows give the usage count, the truncation report and the
model input). Requests are queued; one worker merges what is waiting into a batch (everything queued, up to
``max_batch_size`` texts, plus what arrives within ``max_wait_ms`` of the first), runs `LLM2Comp.encode_token_ids`
on it in a thread (the event loop keeps serving), and hands every request exactly its own rows; the merged rows are
sorted by length and a text that occurs in several requests is embedded once. Responses equal
``encode(texts, normalize_embeddings=True)``.

Limits (`ServeLimits`, also the CLI's defaults): at most ``max_concurrent_requests`` embedding requests are admitted
at once; one more is answered **429** at once (OpenAI's error body, ``Retry-After``) before its body is read, so
memory stays bounded by that many bodies of at most ``max_body_bytes``. Every error is an OpenAI-shaped JSON body
counted in ``/metrics`` (an unexpected failure: 500, ``server_error``); ``/health`` answers 503 when the batcher
cannot serve.
"""

# no `from __future__ import annotations` here: FastAPI reads the handlers' annotations (Request) at definition time
import asyncio
import base64
import dataclasses
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .batcher import BatcherStopped, DynamicBatcher, Metrics

TRUNCATED_HEADER = "X-Llm2comp-Truncated"


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """The server's limits; the one place their defaults live (`llm2comp serve` takes its defaults from here)."""

    max_batch_size: int = 64  # texts per model batch
    max_wait_ms: float = 5.0  # how long a batch waits for more requests
    max_items: int = 2048  # texts per request (OpenAI's limit)
    max_body_bytes: int = 8 * 2**20
    max_concurrent_requests: int = 64  # admitted at once; one more gets 429 (as TEI's --max-concurrent-requests)
    retry_after_s: int = 1  # the Retry-After of a 429

    def __post_init__(self):
        for name in ("max_batch_size", "max_items", "max_body_bytes", "max_concurrent_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


LIMITS = ServeLimits()
MAX_ITEMS, MAX_BODY_BYTES = LIMITS.max_items, LIMITS.max_body_bytes


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _parse_request(payload: Any, model_name: str, dimension: int, max_items: int,
                   declared_dims: Sequence[int] = ()) -> tuple[list[str], str, int | None]:
    if not isinstance(payload, dict):
        raise APIError(400, "the request body must be a JSON object")
    if "input" not in payload:
        raise APIError(400, "'input' is required", param="input")
    items = payload["input"]
    texts = [items] if isinstance(items, str) else items
    if not isinstance(texts, list):
        raise APIError(400, "'input' must be a string or a list of strings", param="input")
    if not texts:
        raise APIError(400, "'input' is an empty list: send at least one text", param="input")
    if len(texts) > max_items:
        raise APIError(400, f"'input' has {len(texts)} items; at most {max_items} per request", param="input")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise APIError(400, f"'input[{index}]' is {type(text).__name__}: this server embeds strings (token-id input "
                           "is not supported)", param="input")
    requested = payload.get("model")
    if requested not in (None, "", model_name):
        raise APIError(404, f"model '{requested}' is not served here (serving '{model_name}')", code="model_not_found",
                       param="model")
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise APIError(400, f"'encoding_format' must be 'float' or 'base64', got {encoding!r}", param="encoding_format")
    dimensions = payload.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions not in (dimension, *declared_dims)):
        sizes = ", ".join(str(d) for d in (dimension, *declared_dims))
        raise APIError(400, f"'dimensions' must be omitted or an integer, one of the sizes this model declares (config "
                       f"matryoshka_dims): {sizes}; got {dimensions!r}",
                       param="dimensions")
    return texts, encoding, dimensions


def _encode_row(row: np.ndarray, encoding: str):
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row.astype(np.float32).tolist()


def tokenize(model, texts: Sequence[str]) -> tuple[list[list[int]], int, int]:
    """(token rows as `encode` makes them, input tokens after truncation, number of texts truncated)."""
    rows = model.token_ids(list(texts))
    return rows, sum(len(row) for row in rows), model.count_truncated(texts, rows)[0]


def create_app(model, model_name: str, *, limits: ServeLimits | None = None, api_key: str | None = None, **limit_kwargs):
    """The ASGI app (FastAPI) serving `model` under `model_name`; ``limits`` (or its fields as keywords) as
    `ServeLimits`."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException

    limits = dataclasses.replace(limits or LIMITS, **limit_kwargs)
    metrics = Metrics()
    batcher = DynamicBatcher(model, max_batch_size=limits.max_batch_size, max_wait_ms=limits.max_wait_ms, metrics=metrics)
    dimension = model.get_sentence_embedding_dimension()
    created = int(time.time())
    admitted = 0  # embedding requests being answered (the event loop is single-threaded: no lock needed)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="llm2comp embeddings", lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.limits = batcher, metrics, limits

    def error_response(error: APIError) -> JSONResponse:
        metrics.requests[error.status] = metrics.requests.get(error.status, 0) + 1
        headers = {"Retry-After": str(limits.retry_after_s)} if error.status in (429, 503) else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):  # unknown route, wrong method: the same shape
        return error_response(APIError(error.status_code, str(error.detail), code=f"http_{error.status_code}"))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        return error_response(APIError(500, f"internal error: {type(error).__name__}", kind="server_error"))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise APIError(413, f"request body of {int(declared)} bytes is over the limit of {limits.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise APIError(413, f"request body is over the limit of {limits.max_body_bytes} bytes")
        return bytes(body)

    async def answer(request: Request, start: float):
        check_key(request)
        try:
            payload = json.loads(await read_body(request))
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON") from None
        texts, encoding, dimensions = _parse_request(payload, model_name, dimension, limits.max_items, model.config.matryoshka_dims)
        token_ids, tokens, truncated = await asyncio.get_running_loop().run_in_executor(None, tokenize, model, texts)
        try:
            rows = await batcher.embed(token_ids)
        except BatcherStopped as stopped:
            raise APIError(503, f"the server cannot embed now: {stopped}", kind="server_error", code="unavailable") from None
        if dimensions is not None and dimensions < dimension:  # a declared size: cut, then renormalise
            rows = rows[:, :dimensions]
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        data = [{"object": "embedding", "index": i, "embedding": _encode_row(row, encoding)} for i, row in enumerate(rows)]
        metrics.requests[200] = metrics.requests.get(200, 0) + 1
        metrics.texts += len(texts)
        metrics.tokens += tokens
        metrics.truncated += truncated
        metrics.request_seconds += time.perf_counter() - start
        body = {"object": "list", "data": data, "model": model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "truncated_inputs": truncated}
        return JSONResponse(body, headers={TRUNCATED_HEADER: str(truncated)})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        nonlocal admitted
        if admitted >= limits.max_concurrent_requests:  # refused before the body is read: memory stays bounded
            return error_response(APIError(429, f"the server is busy ({limits.max_concurrent_requests} requests in "
                                           f"progress); retry after {limits.retry_after_s} s", kind="rate_limit_error",
                                           code="rate_limit_exceeded"))
        admitted += 1
        try:
            return await answer(request, time.perf_counter())
        except APIError as error:
            return error_response(error)
        except Exception as error:  # noqa: BLE001 - answered as OpenAI does, and counted
            return error_response(APIError(500, f"internal error: {type(error).__name__}: {error}", kind="server_error"))
        finally:
            admitted -= 1

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            check_key(request)
        except APIError as error:
            return error_response(error)
        import torch

        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "llm2comp",
                                            "backend": model.backend, "threads": torch.get_num_threads(),
                                            "dimensions": [dimension, *model.config.matryoshka_dims]}]}

    @app.get("/health")
    async def health():
        problem = batcher.problem()
        state = {"model": model_name, "in_flight": admitted, "max_concurrent_requests": limits.max_concurrent_requests,
                 "queued_texts": metrics.queued}
        if problem is not None:
            return JSONResponse({"status": "unavailable", "reason": problem, **state}, status_code=503)
        return {"status": "ok", **state}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.prometheus(), media_type="text/plain; version=0.0.4")

    return app


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, *, device: str | None = None, name: str | None = None,
          limits: ServeLimits = LIMITS, api_key: str | None = None, backend: str = "torch", threads: int | None = None,
          trust_remote_code: bool = False) -> None:
    """Load the model and run the server until SIGINT/SIGTERM (in-flight requests are finished first)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ValueError("llm2comp serve needs fastapi and uvicorn: pip install fastapi uvicorn "
                         "(the `serve` extra of llm2comp)") from None

    from .model import LLM2Comp

    if threads:
        import torch

        torch.set_num_threads(threads)
    model = LLM2Comp.from_pretrained(model_path, device=device, backend=backend, trust_remote_code=trust_remote_code)
    model.merge_and_unload()
    model.eval()
    app = create_app(model, name or str(model_path), limits=limits, api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
