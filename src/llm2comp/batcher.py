"""The dynamic batcher of `llm2comp serve` (`serving.py`): concurrent requests' token rows merged into model batches
that one worker runs off the event loop, each request handed exactly its own rows; and the server's counters."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np


class BatcherStopped(RuntimeError):
    """The batcher's worker is gone: nothing queued now would ever run."""


@dataclasses.dataclass
class Metrics:
    requests: dict[int, int] = dataclasses.field(default_factory=dict)  # by HTTP status
    texts: int = 0
    tokens: int = 0
    truncated: int = 0
    batches: int = 0
    batch_texts: int = 0
    request_seconds: float = 0.0
    encode_seconds: float = 0.0
    queued: int = 0

    def prometheus(self) -> str:
        lines = ["# HELP llm2comp_requests_total Embedding requests answered, by HTTP status.",
                 "# TYPE llm2comp_requests_total counter"]
        lines += [f'llm2comp_requests_total{{status="{status}"}} {count}' for status, count in sorted(self.requests.items())]
        for name, kind, value, help_text in (
            ("texts_total", "counter", self.texts, "Texts embedded."),
            ("tokens_total", "counter", self.tokens, "Input tokens embedded (after truncation)."),
            ("truncated_texts_total", "counter", self.truncated, "Texts cut to the model's max_length."),
            ("batches_total", "counter", self.batches, "Model batches run (several requests may share one)."),
            ("batch_texts_total", "counter", self.batch_texts, "Texts over all model batches (divide by batches_total for the mean batch)."),
            ("request_seconds_total", "counter", self.request_seconds, "Wall time of answered embedding requests."),
            ("encode_seconds_total", "counter", self.encode_seconds, "Time spent in the model."),
            ("queued_texts", "gauge", self.queued, "Texts waiting for the model."),
        ):
            lines += [f"# HELP llm2comp_{name} {help_text}", f"# TYPE llm2comp_{name} {kind}", f"llm2comp_{name} {value}"]
        return "\n".join(lines) + "\n"


@dataclasses.dataclass
class _Job:
    token_ids: list[list[int]]  # the request's texts as `model.token_ids` made them (tokenized once per request)
    future: asyncio.Future


class DynamicBatcher:
    """Merges concurrent requests into model batches; the model runs in one worker thread, off the event loop."""

    def __init__(self, model, max_batch_size: int = 64, max_wait_ms: float = 5.0, metrics: Metrics | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model, self.max_batch_size, self.max_wait = model, max_batch_size, max_wait_ms / 1000
        self.metrics = metrics or Metrics()
        self.queue: asyncio.Queue[_Job] | None = None
        self.worker: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass

    def problem(self) -> str | None:
        """Why the batcher cannot serve (not started, stopped, or its worker died), or None."""
        if self.worker is None:
            return "the batcher has not started"
        if self.worker.done():
            error = None if self.worker.cancelled() else self.worker.exception()
            return f"the batcher stopped: {error!r}" if error is not None else "the batcher stopped"
        return None

    async def embed(self, token_ids: list[list[int]]) -> np.ndarray:
        """Normalised embeddings of token rows made by `model.token_ids`, once their batch has run."""
        if self.worker is not None and self.worker.done():  # never queue work nobody will take
            raise BatcherStopped(self.problem())
        future = asyncio.get_running_loop().create_future()
        self.metrics.queued += len(token_ids)
        await self.queue.put(_Job(token_ids, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size, deadline = len(jobs[0].token_ids), loop.time() + self.max_wait
            while size < self.max_batch_size:
                # what is already waiting joins at once, whatever the time: under load the event loop can spend the
                # whole window writing responses, and wait_for(timeout=0) never takes a queued job
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    if loop.time() >= deadline:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), timeout=deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                jobs.append(job)
                size += len(job.token_ids)
            self.metrics.queued -= size
            live = [job for job in jobs if not job.future.done()]  # a client that went away is not waited for
            if not live:
                continue
            rows = [row for job in live for row in job.token_ids]
            start = time.perf_counter()
            try:
                embeddings = await loop.run_in_executor(None, self._encode, rows)
            except Exception as error:  # noqa: BLE001 - reported to every request of the batch
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            self.metrics.encode_seconds += time.perf_counter() - start
            self.metrics.batches += 1
            self.metrics.batch_texts += len(rows)
            offset = 0
            for job in live:
                mine = embeddings[offset : offset + len(job.token_ids)]
                offset += len(job.token_ids)
                if not job.future.done():
                    job.future.set_result(mine)

    def _encode(self, token_ids: list[list[int]]) -> np.ndarray:
        return self.model.encode_token_ids(token_ids, batch_size=self.max_batch_size, normalize_embeddings=True,
                                           show_progress_bar=False).numpy()
