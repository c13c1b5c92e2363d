"""Load test of `llm2comp serve` on loopback: one client vs many concurrent clients, bounded in count and time.

Prints requests/s, texts/s and p50/p99 latency for a single sequential client and for N concurrent clients, the
number of model batches the server ran (dynamic batching at work), and whether every response matched its own
input (compared with `encode(..., normalize_embeddings=True)` of that request's texts: equal on fp32 backends; on
int8 backends, whose embeddings depend slightly on the batch, within cosine 0.95).

    python benchmarks/serve_load.py --model tiny                       # a tiny random model: server overhead
    python benchmarks/serve_load.py --model smollm2-135m-sup --clients 32 --requests 4
    python benchmarks/serve_load.py --model smollm2-135m-sup --backend onnx-int8 --clients 32 --requests 4
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
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
    request = urllib.request.Request(url, data=json.dumps({"input": texts}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        body = json.loads(response.read())
    return time.perf_counter() - start, np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from llm2comp.serving import create_app
    from llm2comp.testing import SAMPLE_TEXT

    model = _load(args.model, args.backend)
    app = create_app(model, args.model, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
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
    server.should_exit = True


if __name__ == "__main__":
    main()
