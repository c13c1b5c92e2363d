"""`make gpu-check`: does training run under each distributed engine, at a 1B shape, on one GPU? (issue 21)

For every engine (DDP, FSDP, DeepSpeed ZeRO-3; world size 1, launched with `accelerate launch` as a user would) and
every stage (KL compression pre-training, supervised contrastive), a few optimizer steps of `llm2comp train` on a
random-weight model of Llama-3.2-1B's shape; each run passes when it exits cleanly, the engine it reports is the
one asked for (FSDP: one unit per decoder layer, plus the root), every loss is finite, and the saved model holds the
adapter and the memory rows only and loads. Prints one table (pass/fail, step time, peak GPU memory) and writes it
as JSON. One more row checks the bidirectional switch under FlashAttention-2 (a later token must change an earlier
token's state when bidirectional, and must not when causal), where `flash_attn` is installed. About 5-7 minutes on
one H200; DeepSpeed and FlashAttention rows are skipped, saying so, where their packages are not installed.

    python benchmarks/gpu_check.py [--output DIR] [--shape 1b] [--engines ddp,fsdp,zero3] [--stages kl,supervised]

On a CPU machine, `--shape tiny --engines none` checks the script itself (the engines need GPUs: accelerate runs
FSDP only on accelerators, see docs/training-at-scale.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = {
    "none": None,  # no launcher: one plain process (the CPU self-check)
    "ddp": {"distributed_type": "MULTI_GPU"},
    "fsdp": {"distributed_type": "FSDP", "fsdp_config": {
        "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": False, "fsdp_use_orig_params": True, "fsdp_activation_checkpointing": False,
        "fsdp_reshard_after_forward": True}},
    "zero3": {"distributed_type": "DEEPSPEED", "deepspeed_config": {
        "zero_stage": 3, "zero3_init_flag": False, "zero3_save_16bit_model": True, "offload_optimizer_device": "none",
        "offload_param_device": "none", "gradient_accumulation_steps": 1, "gradient_clipping": 2.0}},
}
EXPECTED_ENGINE = {"none": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}


def accelerate_config(engine: str, folder: Path) -> Path | None:
    spec = ENGINES[engine]
    if spec is None:
        return None
    import yaml

    path = folder / f"accelerate-{engine}.yaml"
    path.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "mixed_precision": "bf16", "num_machines": 1,
                                    "num_processes": 1, "machine_rank": 0, "main_training_function": "main", **spec}))
    return path


def make_data(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    from llm2comp.testing import random_sentence

    rng = random.Random(seed)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(random_sentence(rng, 12) for _ in range(12)) for _ in range(400)))
    pairs = folder / "pairs.jsonl"
    with pairs.open("w") as handle:
        for _ in range(400):
            query = random_sentence(rng, 10)
            handle.write(json.dumps({"query": query, "positive": query + " " + random_sentence(rng, 6),
                                     "negative": random_sentence(rng, 12), "source": "synthetic"}) + "\n")
    return corpus, pairs


def stage_config(stage: str, model: Path, corpus: Path, pairs: Path, steps: int, batch: int, length: int) -> dict:
    common = {"model": str(model), "max_steps": steps, "batch_size": batch, "save_steps": steps, "max_length": length,
              "num_memory_tokens": 8, "warmup_steps": 0, "decontaminate": "off", "bf16": "auto", "logging_steps": 1,
              "attn_implementation": "sdpa"}
    if stage == "kl":
        return {**common, "stage": "pretrain", "objective": "kl", "data": str(corpus), "min_chars": 0, "lora_dropout": 0.0}
    return {**common, "stage": "supervised", "data": str(pairs), "bidirectional": False, "max_length": 64}


def run_one(engine: str, stage: str, folder: Path, model: Path, data: tuple[Path, Path], args) -> dict:
    import torch
    import yaml

    row = {"engine": engine, "stage": stage}
    if engine == "zero3" and importlib.util.find_spec("deepspeed") is None:
        return {**row, "result": "skipped", "why": "deepspeed is not installed (pip install deepspeed)"}
    output = folder / f"run-{engine}-{stage}"
    config = folder / f"{engine}-{stage}.yaml"
    config.write_text(yaml.safe_dump(stage_config(stage, model, *data, args.steps, args.batch_size, args.length)))
    launcher = accelerate_config(engine, folder)
    train = ["-m", "llm2comp", "train", "--config", str(config), "--output", str(output)]
    command = [sys.executable, *train] if launcher is None else [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launcher), *train]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired:
        return {**row, "result": "FAIL", "why": f"timed out after {args.timeout} s"}
    row["wall_s"] = round(time.perf_counter() - started, 1)
    (folder / f"{engine}-{stage}.log").write_text(result.stdout + result.stderr)
    problems = []
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        return {**row, "result": "FAIL", "why": f"exit {result.returncode}: {tail[0][:200]}"}
    engine_line = re.search(r"engine: (\w+), (\d+) process\(es\)(?:, (\d+) FSDP unit\(s\))?", result.stdout + result.stderr)
    if not engine_line or engine_line.group(1) != EXPECTED_ENGINE[engine]:
        problems.append(f"engine reported {engine_line.group(0) if engine_line else 'nothing'}, not {EXPECTED_ENGINE[engine]}")
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    if engine == "fsdp" and engine_line and engine_line.group(3) != str(layers + 1):
        problems.append(f"{engine_line.group(3)} FSDP units, expected {layers + 1} (one per decoder layer + the root)")
    records = [json.loads(line) for line in (output / "loss.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r]
    if len(steps) != args.steps or not all(math.isfinite(r["loss"]) for r in steps):
        problems.append(f"losses {[r.get('loss') for r in steps]}")
    if len(steps) > 1 and "elapsed_s" in steps[-1]:  # the first step (warm-up, compilation) left out
        row["step_s"] = round((steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]) / (len(steps) - 1), 3)
    row["peak_gpu_gib"] = max((r.get("peak_gpu_gib", 0.0) for r in records), default=0.0)
    row["losses"] = [round(r["loss"], 4) for r in steps]
    saved = sorted(str(p.relative_to(output)) for p in output.glob("**/*.safetensors") if "checkpoints" not in p.parts)
    if saved != ["adapters/0/adapter_model.safetensors", "memory_tokens.safetensors"]:
        problems.append(f"saved {saved}")
    try:
        from llm2comp import LLM2Comp

        LLM2Comp.from_pretrained(str(output), device="cuda" if torch.cuda.is_available() else "cpu").encode(["a check sentence"])
    except Exception as error:  # noqa: BLE001 - any failure to load is this row's failure
        problems.append(f"does not load: {error}")
    return {**row, "result": "FAIL" if problems else "pass", **({"why": "; ".join(problems)} if problems else {})}


def check_flash_attention_bidirectional(model_dir: Path) -> dict:
    """The bidirectional switch under flash_attention_2 (bf16, CUDA): does a later token reach an earlier one?"""
    import torch

    row = {"engine": "-", "stage": "fa2-bidir"}
    if importlib.util.find_spec("flash_attn") is None:
        return {**row, "result": "skipped", "why": "flash_attn is not installed"}
    from llm2comp import LLM2Comp
    from llm2comp.attention import bidirectional

    model = LLM2Comp.from_pretrained(str(model_dir), device="cuda", dtype="bfloat16", attn_implementation="flash_attention_2")
    ids = torch.randint(3, 200, (2, 12), device="cuda")
    changed = ids.clone()
    changed[:, 8] = (changed[:, 8] + 1 - 3) % 197 + 3
    mask = torch.ones_like(ids)
    early = {}
    with torch.no_grad():
        for enabled in (False, True):
            states = []
            for batch in (ids, changed):
                with bidirectional(model.hf_model, enabled) as kwargs:
                    states.append(model.body(input_ids=batch, attention_mask=mask, **kwargs).last_hidden_state.float())
            early[enabled] = (states[0][:, :8] - states[1][:, :8]).abs().amax().item()
    ok = early[True] > 1e-3 and early[False] < 1e-6
    return {**row, "result": "pass" if ok else "FAIL", "why": f"earlier-state change: bidirectional {early[True]:.3g}, causal {early[False]:.3g}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.environ.get("OUT", "runs/gpu-check"))
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--engines", default="ddp,fsdp,zero3")
    parser.add_argument("--stages", default="kl,supervised")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--timeout", type=int, default=240, help="seconds per run")
    args = parser.parse_args()
    import torch

    from llm2comp.testing import make_tiny_model_dir, shape_overrides

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    if any(e != "none" for e in engines) and not torch.cuda.is_available():
        parser.error("the engines need a GPU (accelerate runs FSDP / DeepSpeed / multi-GPU DDP on accelerators only); "
                     "on CPU use --engines none")
    with tempfile.TemporaryDirectory(dir=output) as scratch:
        folder = Path(scratch)
        model = make_tiny_model_dir(folder / f"model-{args.shape}", "llama", **shape_overrides(args.shape))
        data = make_data(folder)
        print(f"model of shape {args.shape} written in {folder}", flush=True)
        rows = []
        for engine in engines:
            for stage in [s for s in args.stages.split(",") if s]:
                row = run_one(engine, stage, folder, model, data, args)
                rows.append(row)
                print(json.dumps(row), flush=True)
                log = folder / f"{engine}-{stage}.log"
                if log.exists():
                    (output / log.name).write_text(log.read_text()[-20000:])
        if torch.cuda.is_available():  # while the model folder still exists
            rows.append(check_flash_attention_bidirectional(model))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'engine':<7} {'stage':<11} {'result':<8} {'step s':>7} {'peak GiB':>9}  note")
    for row in rows:
        print(f"{row['engine']:<7} {row['stage']:<11} {row['result']:<8} {row.get('step_s', float('nan')):>7.3f} "
              f"{row.get('peak_gpu_gib', float('nan')):>9.2f}  {row.get('why', '')}")
    (output / "gpu_check.json").write_text(json.dumps({"shape": args.shape, "rows": rows}, indent=2))
    return 0 if all(r["result"] in ("pass", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
