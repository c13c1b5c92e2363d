"""Inference backends side by side in one run (issue 22): texts/s of `encode` per backend on the same texts,
interleaved over rounds, the speed-up over fp32 torch, the cosine between each text's fp32 and backend embedding
(mean, minimum), and the resident memory of each loaded model (each measured in a fresh subprocess).

Several models (comma-separated) are measured in the same interleaved rounds, each against its own fp32 torch and
against the first model's, with the tokens per text of each tokenizer and the peak resident memory of loading it and
encoding the texts (VmHWM of a fresh process).

    python benchmarks/backends.py                                # the shipped default on STS-B test sentences
    python benchmarks/backends.py --model smollm2-135m-sup,runs/gemma3-default --backends torch   # two backbones
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


def resident_mib(model: str, backend: str, texts: list[str], batch_size: int) -> tuple[float, float]:
    """(resident-memory growth of a fresh process that loads the model on the backend, that process's peak resident
    memory after encoding the texts), in MiB (Linux)."""
    # VmRSS (current) for the loaded model, not the peak: a forked child starts with its parent's peak, which hides it;
    # VmHWM after exec is this process's own peak (loading, merging and encoding)
    code = (
        "import json, re, sys; from llm2comp import LLM2Comp;"
        "status = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1));"
        "texts = json.load(sys.stdin); before = status('VmRSS');"
        f"m = LLM2Comp.from_pretrained({model!r}, backend={backend!r}); m.merge_and_unload();"
        "m.encode(['warm up'] * 4); import gc; gc.collect(); loaded = status('VmRSS');"
        f"m.encode(texts, batch_size={batch_size});"
        "print((loaded - before) / 1024, status('VmHWM') / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         input=json.dumps(texts)).stdout
    resident, peak = out.strip().splitlines()[-1].split()
    return float(resident), float(peak)


def main() -> None:
    import numpy as np

    from llm2comp import LLM2Comp
    from llm2comp.testing import make_tiny_model_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-sup", help="alias/path, or 'tiny'; comma-separated for several")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated; torch is always measured")
    args = parser.parse_args()
    backends = ["torch", *(b for b in args.backends.split(",") if b and b != "torch")]

    names = {label: str(make_tiny_model_dir(tempfile.mkdtemp() + "/tiny")) if label == "tiny" else label
             for label in args.model.split(",")}
    texts = sentences(args.n)
    models, tokens = {}, {}
    for label, name in names.items():
        for backend in backends:
            model = LLM2Comp.from_pretrained(name, backend=backend)
            model.merge_and_unload()
            model.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
            models[label, backend] = model
        tokens[label] = statistics.mean(len(row) for row in model.token_ids(texts)) + model.pooling.memory_slots(model.config)
    seconds = {key: [] for key in models}
    embeddings = {}
    for _ in range(args.rounds):
        for key, model in models.items():
            start = time.perf_counter()
            embeddings[key] = model.encode(texts, batch_size=args.batch_size)
            seconds[key].append(time.perf_counter() - start)
    rates = {key: len(texts) / statistics.median(s) for key, s in seconds.items()}
    first = next(iter(names))
    print(f"{len(texts)} texts, batch {args.batch_size}, {args.rounds} interleaved rounds (median)")
    for label, name in names.items():
        reference = embeddings[label, "torch"]
        print(f"\nmodel {label}: {tokens[label]:.1f} tokens per text (memory tokens included)")
        print(f"{'backend':<12} {'texts/s':>9} {'vs torch':>9} {'cos mean':>9} {'cos min':>9} {'RSS MiB':>9} "
              f"{'peak MiB':>9} {'vs ' + first[:20]:>12}")
        for backend in backends:
            e = embeddings[label, backend]
            cosine = (e * reference).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(reference, axis=1)
            resident, peak = resident_mib(name, backend, texts, args.batch_size)
            relative = rates[label, backend] / rates[first, backend]
            print(f"{backend:<12} {rates[label, backend]:>9.1f} {rates[label, backend] / rates[label, 'torch']:>8.2f}x "
                  f"{cosine.mean():>9.4f} {cosine.min():>9.4f} {resident:>9.0f} {peak:>9.0f} {relative:>11.2f}x")


if __name__ == "__main__":
    main()
