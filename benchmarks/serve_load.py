"""Load test of `llm2comp serve` on loopback: one client vs many concurrent clients, bounded in count and time.

Prints requests/s, texts/s and p50/p99 latency for a single sequential client and for N concurrent clients, the
number of model batches the server ran (dynamic batching at work), and whether every response matched its own
input (compared with `encode(..., normalize_embeddings=True)` of that request's texts: equal on fp32 backends; on
int8 backends, whose embeddings depend slightly on the batch, within cosine 0.95).

Then an overload phase: ``--overload-clients`` clients (far more than ``--max-concurrent-requests``) send requests
without pause for ``--overload-seconds``; every request must be answered 200 or 429 (none lost, no other status),
every 200 must hold its own rows, the process's resident memory must stay bounded, and /health must answer ok
afterwards. It prints requests/s, the 429 share, and resident / peak memory.

    python benchmarks/serve_load.py --model tiny                       # a tiny random model: server overhead
    python benchmarks/serve_load.py --model smollm2-135m-sup --clients 32 --requests 4
    python benchmarks/serve_load.py --model smollm2-135m-sup --backend onnx-int8 --clients 32 --requests 4
    python benchmarks/serve_load.py --model smollm2-135m-sup --max-concurrent-requests 8 --overload-clients 64 --overload-seconds 60
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def _load(name: str, backend: str = "torch"):
    from llm2comp import LLM2Comp

    if name == "tiny":
        from llm2comp.testing import make_tiny_model_dir

        return LLM2Comp.from_pretrained(make_tiny_model_dir(tempfile.mkdtemp() + "/tiny", "llama"), num_memory_tokens=4, backend=backend)
    model = LLM2Comp.from_pretrained(name, backend=backend)
    model.merge_and_unload()
    return model


def _own_rows(rows, texts, reference: dict, exact: bool) -> bool:
    """Whether a response's rows are its own texts' embeddings: equal to them (fp32 backends), or within cosine 0.95
    of them (int8 backends, batch-dependent; the request texts here are near-duplicates of each other, so this
    catches a mix-up between different sentences, not between two suffixes of one)."""
    own = np.stack([reference[t] for t in texts])
    if exact:
        return bool(np.allclose(rows, own, atol=1e-4))
    return bool(((np.asarray(rows) * own).sum(1) > 0.95).all())


def _start(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1/embeddings"


def _post(url: str, texts: list[str]) -> tuple[float, np.ndarray]:
    """(latency, rows) of a request that must succeed."""
    start = time.perf_counter()
    status, rows, _ = _post_status(url, texts)
    if status != 200:
        raise RuntimeError(f"request answered {status}")
    return time.perf_counter() - start, rows


def _post_status(url: str, texts: list[str]) -> tuple[int, np.ndarray | None, str]:
    """(HTTP status, rows of a 200, Retry-After of a 429) of one request; any other failure raises."""
    request = urllib.request.Request(url, data=json.dumps({"input": texts}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            body = json.loads(response.read())
            return response.status, np.array([d["embedding"] for d in body["data"]], dtype=np.float32), ""
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())  # an OpenAI-shaped error body, whatever the status
        assert "error" in body, body
        return error.code, None, error.headers.get("Retry-After", "")


def _memory_mib() -> tuple[float, float]:
    """(resident, peak resident) MiB of this process (the server runs in it)."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="requests per concurrent client")
    parser.add_argument("--texts", type=int, default=4, help="texts per request")
    parser.add_argument("--single-requests", type=int, default=32, help="requests of the one-client baseline")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--time-limit", type=float, default=600, help="stop sending new requests after this many seconds")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--backend", default="torch", help="what runs the network (llm2comp.backends.BACKENDS)")
    parser.add_argument("--max-concurrent-requests", type=int, default=8, help="the server's admission limit")
    parser.add_argument("--overload-clients", type=int, default=64, help="clients of the overload phase (0: none)")
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from llm2comp.serving import create_app
    from llm2comp.testing import SAMPLE_TEXT

    model = _load(args.model, args.backend)
    app = create_app(model, args.model, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                     max_concurrent_requests=args.max_concurrent_requests)
    server, url = _start(app)
    metrics = app.state.metrics

    def request_texts(client: int, index: int) -> list[str]:  # distinct per request: a mix-up would show
        return [f"{SAMPLE_TEXT[(client + index + j) % len(SAMPLE_TEXT)]} ({client}.{index}.{j})" for j in range(args.texts)]

    stop_at = time.time() + args.time_limit
    _post(url, request_texts(-1, 0))  # warm-up

    def run_client(client: int, count: int) -> list[tuple[list[str], float, np.ndarray]]:
        out = []
        for index in range(count):
            if time.time() > stop_at:
                break
            texts = request_texts(client, index)
            latency, rows = _post(url, texts)
            out.append((texts, latency, rows))
        return out

    results = {}
    for label, clients, count in (("1 client", 1, args.single_requests), (f"{args.clients} clients", args.clients, args.requests)):
        batches_before = metrics.batches
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            done = [r for part in pool.map(lambda c: run_client(c, count), range(clients)) for r in part]
        seconds = time.perf_counter() - start
        results[label] = (done, seconds, metrics.batches - batches_before)

    texts = sorted({t for done, _, _ in results.values() for texts, _, _ in done for t in texts})
    # int8 backends quantise each batch's activations with one scale: a text's embedding then depends a little on the
    # other texts of its batch, so a response can only be checked as nearest to its own texts' reference rows
    exact = not model.backend.endswith("int8")
    reference = dict(zip(texts, model.encode(texts, normalize_embeddings=True, batch_size=args.max_batch_size, show_progress_bar=False)))
    print(f"model={args.model}, {args.texts} texts per request, max batch {args.max_batch_size}, max wait {args.max_wait_ms} ms, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'clients':<12}{'requests':>9}{'req/s':>9}{'texts/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batches':>9}{'matched':>10}")
    for label, (done, seconds, batches) in results.items():
        latencies = sorted(1000 * latency for _, latency, _ in done)
        matched = sum(_own_rows(rows, texts, reference, exact) for texts, _, rows in done)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        print(f"{label:<12}{len(done):>9}{len(done) / seconds:>9.1f}{len(done) * args.texts / seconds:>9.1f}"
              f"{statistics.median(latencies):>9.0f}{p99:>9.0f}{batches:>9}{f'{matched}/{len(done)}':>10}")
    single, many = (results[k] for k in results)
    print(f"throughput {args.clients} clients / 1 client: {len(many[0]) / many[1] / (len(single[0]) / single[1]):.2f}x")
    if args.overload_clients:
        overload(url, args, request_texts, model, exact, metrics)
    server.should_exit = True


def overload(url, args, request_texts, model, exact: bool, metrics) -> None:
    """Many more clients than the admission limit, for a bounded time: 200 or 429 for every request, nothing else."""
    resident_before, _ = _memory_mib()
    stop_at = time.time() + args.overload_seconds

    def client(c: int) -> list[tuple[int, list[str], np.ndarray | None, str]]:
        out, index = [], 0
        while time.time() < stop_at:
            texts = request_texts(1000 + c, index)
            status, rows, retry = _post_status(url, texts)
            out.append((status, texts, rows, retry))
            index += 1
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(args.overload_clients) as pool:
        answers = [a for part in pool.map(client, range(args.overload_clients)) for a in part]
    seconds = time.perf_counter() - start
    resident_after, peak = _memory_mib()
    statuses = {status: sum(1 for a in answers if a[0] == status) for status in sorted({a[0] for a in answers})}
    ok = [a for a in answers if a[0] == 200]
    texts = sorted({t for _, request, _, _ in ok for t in request})
    reference = dict(zip(texts, model.encode(texts, normalize_embeddings=True, batch_size=args.max_batch_size, show_progress_bar=False)))
    matched = sum(_own_rows(rows, request, reference, exact) for _, request, rows, _ in ok)
    with urllib.request.urlopen(url.replace("/v1/embeddings", "/health"), timeout=30) as response:
        health = json.loads(response.read())
    print(f"overload: {args.overload_clients} clients, limit {args.max_concurrent_requests} concurrent requests, "
          f"{args.overload_seconds:g} s")
    print(f"{'requests':>9}{'req/s':>9}{'200/s':>9}{'429 share':>11}{'statuses':>22}{'matched':>10}"
          f"{'RSS before':>12}{'RSS after':>11}{'peak RSS':>10}{'health':>8}")
    print(f"{len(answers):>9}{len(answers) / seconds:>9.1f}{len(ok) / seconds:>9.1f}"
          f"{statuses.get(429, 0) / max(1, len(answers)):>11.1%}  {json.dumps(statuses):>20}{f'{matched}/{len(ok)}':>10}"
          f"{resident_before:>11.0f}M{resident_after:>10.0f}M{peak:>9.0f}M{health['status']:>8}")
    lost = set(statuses) - {200, 429}
    print("every request answered 200 or 429: " + ("yes" if not lost else f"NO ({lost})")
          + f"; every 200 its own rows: {'yes' if matched == len(ok) else 'NO'}; 429s carry Retry-After: "
          + ("yes" if all(a[3] for a in answers if a[0] == 429) else "NO")
          + f"; counted in /metrics: {metrics.requests.get(429, 0) >= statuses.get(429, 0)}")


if __name__ == "__main__":
    main()
