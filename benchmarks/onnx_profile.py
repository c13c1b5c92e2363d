"""Where ONNX Runtime's time goes in the `onnx` backend (issue 22), and what graph fusions buy: the exported body as
the backend runs it, beside the same graph after onnxscript's ONNX Runtime fusions (RMSNorm and residual ->
SkipSimplifiedLayerNormalization, rotary -> RotaryEmbedding, attention -> MultiHeadAttention), side by side in one
run on the batches `encode` really makes (length-sorted STS-B test sentences with their memory tokens).

Prints each graph's node count, milliseconds per pass over the batches (interleaved rounds, median), its speed against
the plain graph, how far its hidden states are from the plain graph's, and the share of ONNX Runtime's kernel time
per operator type (its profiler).

    python benchmarks/onnx_profile.py                      # the shipped default
    python benchmarks/onnx_profile.py --model tiny --n 16 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def record_feeds(model, texts: list[str], batch_size: int) -> list[dict[str, np.ndarray]]:
    """The inputs `encode` hands the ONNX session for ``texts``, batch by batch."""
    runner, feeds = model.body_runner, []

    def recording(inputs_embeds, attention_mask, **ignored):
        feeds.append({"inputs_embeds": inputs_embeds.detach().float().numpy().copy(),
                      "attention_mask": attention_mask.numpy().astype(np.int64)})
        return runner(inputs_embeds, attention_mask)

    model.body_runner = recording
    try:
        model.encode(texts, batch_size=batch_size, show_progress_bar=False)
    finally:
        model.body_runner = runner
    return feeds


def fuse_for_ort(source: Path, target: Path) -> dict[str, int]:
    """onnxscript's ONNX Runtime fusions of ``source`` written to ``target``; returns the fusions applied."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    graph, applied = optimize_for_ort(ir.load(str(source)))
    target.parent.mkdir(parents=True, exist_ok=True)
    ir.save(graph, str(target), external_data=target.name + ".data")
    return {name: count for name, count in applied.items() if count}


def session(path: Path, threads: int, profile_prefix: str | None = None):
    """A session with the ONNX backends' options (profiling on when ``profile_prefix`` is given)."""
    import onnxruntime as ort

    from llm2comp.onnx_backend import session_options

    options = session_options(threads)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_all(sess, feeds) -> list[np.ndarray]:
    return [sess.run(["last_hidden_state"], feed)[0] for feed in feeds]


def operator_shares(path: Path, feeds, threads: int, folder: Path) -> dict[str, float]:
    """{operator type: share of ONNX Runtime's kernel time} over one pass (after a warm-up pass)."""
    sess = session(path, threads, profile_prefix=str(folder / path.parent.name))
    run_all(sess, feeds)
    run_all(sess, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    times: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"]
    total = sum(times.values())
    return {op: t / total for op, t in times.most_common()}


def distance(reference: list[np.ndarray], other: list[np.ndarray], feeds) -> tuple[float, float]:
    """(largest absolute difference relative to the largest value, smallest cosine) over the real tokens."""
    scale = max(float(np.abs(r).max()) for r in reference)
    largest, worst_cosine = 0.0, 1.0
    for a, b, feed in zip(reference, other, feeds):
        keep = feed["attention_mask"].astype(bool)
        a, b = a[keep], b[keep]
        largest = max(largest, float(np.abs(a - b).max()) / scale)
        cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        worst_cosine = min(worst_cosine, float(cosine.min()))
    return largest, worst_cosine


def main() -> None:
    import onnx

    from llm2comp import LLM2Comp
    from llm2comp.testing import make_tiny_model_dir

    sys.path.insert(0, str(Path(__file__).parent))
    from backends import sentences

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-sup", help="alias/path, or 'tiny'")
    parser.add_argument("--n", type=int, default=256, help="texts encoded")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=8, help="operator types listed")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    logging.getLogger().setLevel(logging.ERROR)

    name = str(make_tiny_model_dir(tempfile.mkdtemp() + "/tiny")) if args.model == "tiny" else args.model
    model = LLM2Comp.from_pretrained(name, backend="onnx", device="cpu")
    feeds = record_feeds(model, sentences(args.n), args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {"plain": model.body_runner.path, "fused": folder / "fused" / "model.onnx"}
        applied = fuse_for_ort(paths["plain"], paths["fused"])
        sessions = {graph: session(path, threads) for graph, path in paths.items()}
        outputs = {graph: run_all(s, feeds) for graph, s in sessions.items()}  # also the warm-up
        seconds = {graph: [] for graph in paths}
        for _ in range(args.rounds):
            for graph, s in sessions.items():
                start = time.perf_counter()
                run_all(s, feeds)
                seconds[graph].append(time.perf_counter() - start)
        shares = {graph: operator_shares(path, feeds, threads, folder) for graph, path in paths.items()}
        nodes = {graph: len(onnx.load(str(path), load_external_data=False).graph.node) for graph, path in paths.items()}

    per_pass = {graph: statistics.median(s) for graph, s in seconds.items()}
    rows = sum(int(f["attention_mask"].size) for f in feeds)
    print(f"{args.model}: {len(feeds)} batches of up to {args.batch_size} texts ({rows} token rows with padding), "
          f"{threads} threads, {args.rounds} interleaved rounds (median)")
    print("fusions applied: " + (", ".join(f"{k} {v}" for k, v in applied.items()) or "none"))
    print(f"\n{'graph':<6} {'nodes':>6} {'ms per pass':>12} {'vs plain':>9} {'max rel diff':>13} {'min cosine':>11}")
    for graph in paths:
        diff, cosine = distance(outputs["plain"], outputs[graph], feeds)
        print(f"{graph:<6} {nodes[graph]:>6} {1e3 * per_pass[graph]:>12.2f} {per_pass['plain'] / per_pass[graph]:>8.2f}x "
              f"{diff:>13.2e} {cosine:>11.6f}")
    ops = list(dict.fromkeys([*list(shares["plain"])[: args.top], *list(shares["fused"])[: args.top]]))
    print(f"\n{'operator':<34} {'plain':>7} {'fused':>7}   (share of kernel time)")
    for op in ops:
        print(f"{op:<34} " + " ".join(f"{100 * shares[g].get(op, 0.0):>6.1f}%" for g in paths))


if __name__ == "__main__":
    main()
