"""Stage-1 KL step: one model copy (adapter off = frozen decoder/teacher) vs a second frozen copy (the authors' layout).

Each variant runs in its own process (clean peak-memory accounting), alternated over --rounds; prints the
peak memory and median step time of each and the ratios one/two. Targets: memory <= 0.6x, time <= 1.0x.

    python benchmarks/one_copy_memory.py                          # embedded default, CPU
    python benchmarks/one_copy_memory.py --model tiny --steps 2   # smoke run
    python benchmarks/one_copy_memory.py --model random:1b --batch-size 2 --gradient-checkpointing --steps 1 --rounds 1
                                                                  # random weights of a real shape (llm2comp.testing.MODEL_SHAPES)
On CUDA, memory is torch.cuda.max_memory_allocated; on CPU, the peak RSS of the training steps (Linux: the peak is
reset after loading, so load-time transients such as mmap'd checkpoint pages are not counted) above the process's
RSS before loading.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux >= 4.0: writing 5 to clear_refs resets VmHWM); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM:"))


def run_variant(args) -> dict:
    import torch

    from llm2comp import LLM2Comp
    from llm2comp.objectives.pretext import CompressionObjective
    from llm2comp.testing import SAMPLE_TEXT, make_tiny_model_dir

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_name = args.model
    if model_name == "tiny":
        model_name = str(make_tiny_model_dir(tempfile.mkdtemp() + "/tiny"))
    baseline = _rss_mb()
    model = LLM2Comp.from_pretrained(model_name, device=device, max_length=args.length + 16)
    model.add_lora()
    if args.gradient_checkpointing:  # as `train --gradient-checkpointing` does; HF checkpoints only in training mode
        model.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.hf_model.enable_input_require_grads()
        model.train()
    frozen = None
    if args.variant == "two":
        from llm2comp.backbone import load_backbone

        frozen, _ = load_backbone(model_name, device=device, dtype=model.dtype)
        frozen.requires_grad_(False).eval()
    objective = CompressionObjective(model, kind="kl", frozen_copy=frozen)
    text = " ".join(SAMPLE_TEXT * 40)
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][: args.length]
    batch = objective.collate([{"input_ids": ids, "index": i} for i in range(args.batch_size)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    windowed = device == "cpu" and _reset_peak_rss()
    times = []
    for step in range(args.steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = objective(model, batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
    if device == "cuda":
        memory = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mb() if windowed else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory = peak - baseline
    return {"variant": args.variant, "memory_mb": memory, "step_s": statistics.median(times), "device": device,
            "loss": float(loss)} | ({"model_alloc_mb": base_alloc / 2**20} if device == "cuda" else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m",
                        help="alias/path, 'tiny' for a random tiny model, or random:SHAPE (random weights of a real shape)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--variant", choices=["one", "two"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    model_path = args.model
    if args.model.startswith("random:"):  # written once, loaded by both variants
        from llm2comp.testing import make_tiny_model_dir, shape_overrides

        model_path = str(make_tiny_model_dir(tempfile.mkdtemp() + "/model", **shape_overrides(args.model.split(":", 1)[1])))
    results = {"one": [], "two": []}
    for _ in range(args.rounds):
        for variant in ("one", "two"):
            command = [sys.executable, __file__, "--variant", variant, "--model", model_path, "--batch-size",
                       str(args.batch_size), "--length", str(args.length), "--steps", str(args.steps)]
            command += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[variant].append(json.loads(output.strip().splitlines()[-1]))
    summary = {v: {"memory_mb": statistics.median(r["memory_mb"] for r in runs), "step_s": statistics.median(r["step_s"] for r in runs)}
               for v, runs in results.items()}
    device = results["one"][0]["device"]
    print(f"KL step, model={args.model}, batch={args.batch_size}x{args.length} tokens, device={device}, "
          f"{args.rounds} rounds x {args.steps} steps (medians)"
          + (", gradient checkpointing" if args.gradient_checkpointing else ""))
    print(f"{'layout':<34}{'peak memory (MB)':>18}{'step time (s)':>16}")
    print(f"{'one copy (adapter off = teacher)':<34}{summary['one']['memory_mb']:>18.0f}{summary['one']['step_s']:>16.3f}")
    print(f"{'two copies (frozen second model)':<34}{summary['two']['memory_mb']:>18.0f}{summary['two']['step_s']:>16.3f}")
    memory_ratio = summary["one"]["memory_mb"] / summary["two"]["memory_mb"]
    time_ratio = summary["one"]["step_s"] / summary["two"]["step_s"]
    print(f"ratio one/two: memory {memory_ratio:.2f}x (target <= 0.60), step time {time_ratio:.2f}x (target <= 1.00)")
    loss_gap = abs(results["one"][0]["loss"] - results["two"][0]["loss"])
    print(f"same loss in both layouts: |diff| = {loss_gap:.2e}")


if __name__ == "__main__":
    main()
