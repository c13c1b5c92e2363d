"""Inference backends side by side in one run (issue 22): texts/s of `encode` per backend on the same texts,
interleaved over rounds, the speed-up over fp32 torch, the cosine between each text's fp32 and backend embedding
(mean, minimum), and the resident memory of each loaded model (each measured in a fresh subprocess).

    python benchmarks/backends.py                                # the shipped default on STS-B test sentences
    python benchmarks/backends.py --model tiny --n 32 --rounds 1  # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm2comp.backends import BACKENDS


def sentences(n: int) -> list[str]:
    """STS-B test sentences where the benchmark folder is present, else mixed-length sample text."""
    from llm2comp.data.benchmark_dir import resolve_data_dir

    try:
        root = resolve_data_dir()
    except FileNotFoundError:
        root = None
    path = root / "mteb" / "STSBenchmark" / "test.jsonl" if root else None
    if path is not None and path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return list(dict.fromkeys(t for r in rows for t in (r["sentence1"], r["sentence2"])))[:n]
    sys.path.insert(0, str(Path(__file__).parent))
    from encode_throughput import mixed_texts

    return mixed_texts(n)


def resident_mib(model: str, backend: str) -> float:
    """Resident-memory growth of a fresh process that loads the model on the backend (MiB; Linux)."""
    # current RSS (VmRSS), not the peak: a forked child starts with its parent's peak, which hides the model
    code = (
        "import re; from llm2comp import LLM2Comp;"
        "rss = lambda: int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1));"
        "before = rss();"
        f"m = LLM2Comp.from_pretrained({model!r}, backend={backend!r}); m.merge_and_unload();"
        "m.encode(['warm up'] * 4); import gc; gc.collect();"
        "print((rss() - before) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    import numpy as np

    from llm2comp import LLM2Comp
    from llm2comp.testing import make_tiny_model_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-sup", help="alias/path, or 'tiny'")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated; torch is always measured")
    args = parser.parse_args()
    backends = ["torch", *(b for b in args.backends.split(",") if b and b != "torch")]

    name = str(make_tiny_model_dir(tempfile.mkdtemp() + "/tiny")) if args.model == "tiny" else args.model
    texts = sentences(args.n)
    models = {}
    for backend in backends:
        model = LLM2Comp.from_pretrained(name, backend=backend)
        model.merge_and_unload()
        model.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
        models[backend] = model
    seconds = {b: [] for b in backends}
    embeddings = {}
    for _ in range(args.rounds):
        for backend, model in models.items():
            start = time.perf_counter()
            embeddings[backend] = model.encode(texts, batch_size=args.batch_size)
            seconds[backend].append(time.perf_counter() - start)
    rates = {b: len(texts) / statistics.median(s) for b, s in seconds.items()}
    reference = embeddings["torch"]
    print(f"{len(texts)} texts, batch {args.batch_size}, {args.rounds} interleaved rounds (median), model {args.model}")
    print(f"{'backend':<12} {'texts/s':>9} {'vs torch':>9} {'cos mean':>9} {'cos min':>9} {'RSS MiB':>9}")
    for backend in backends:
        e = embeddings[backend]
        cosine = (e * reference).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(reference, axis=1)
        print(f"{backend:<12} {rates[backend]:>9.1f} {rates[backend] / rates['torch']:>8.2f}x {cosine.mean():>9.4f} "
              f"{cosine.min():>9.4f} {resident_mib(name, backend):>9.0f}")


if __name__ == "__main__":
    main()
