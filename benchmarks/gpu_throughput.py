"""GPU throughput of the three hot paths on random-initialised models of real shapes (no network needed):
a stage-1 KL step, a SimCSE step and `encode`. Prints tokens/s and model-FLOPs utilisation (MFU).

    python benchmarks/gpu_throughput.py --shape llama2-7b --batch-size 4 --length 512
    python benchmarks/gpu_throughput.py --shape 1b --batch-size 16 --length 512 --attn flash_attention_2
    python benchmarks/gpu_throughput.py --shape tiny --device cpu --dtype float32   # smoke run on CPU

Model FLOPs per token and pass are 2*N (N = non-embedding parameters, LM head included where it runs) plus
4*layers*hidden*context for attention. Backward through the frozen base computes activation gradients only
(LoRA), counted as one more forward's worth; so fwd = 1x, fwd+bwd = 2x. MFU = model FLOPs / time / peak.
"""

from __future__ import annotations

import argparse
import time

import torch

from llm2comp.testing import MODEL_SHAPES as SHAPES

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def build(shape: str, device: str, dtype: torch.dtype, attn: str, max_length: int):
    from transformers import AutoModelForCausalLM

    from llm2comp.model import LLM2Comp, LLM2CompConfig
    from llm2comp.testing import shape_overrides, tiny_config, tiny_tokenizer

    config = tiny_config("llama", attn, **{**shape_overrides(shape), "max_position_embeddings": max(4096, max_length)})
    with torch.device(device):
        hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = LLM2Comp(hf_model, tiny_tokenizer(), LLM2CompConfig(base_model=f"random-{shape}", max_length=max_length))
    model.add_lora()
    return model


def parameter_count(model) -> tuple[int, int]:
    body = sum(p.numel() for n, p in model.hf_model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n and "lora_" not in n)
    head = model.hf_model.get_output_embeddings().weight.numel()
    return body, head


def measure(fn, steps: int, device: str) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    from llm2comp.objectives.pretext import CompressionObjective

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="1b")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attn", default="sdpa", help="sdpa, eager, flash_attention_2 (if installed)")
    parser.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s of the device (default: looked up by name)")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    k = 8
    model = build(args.shape, args.device, dtype, args.attn, args.length + k + 8).train()
    body, head = parameter_count(model)
    hidden, layers = SHAPES[args.shape][0], SHAPES[args.shape][1]
    batch, length = args.batch_size, args.length
    vocab = model.vocab_size
    examples = [{"input_ids": torch.randint(3, vocab, (length,)).tolist(), "index": i} for i in range(batch)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def flops(tokens: int, context: int, with_head: bool, multiplier: float) -> float:
        return tokens * (2 * (body + (head if with_head else 0)) + 4 * layers * hidden * context) * multiplier

    # stage-1 KL step
    objective = CompressionObjective(model, kind="kl")
    kl_batch = objective.collate(examples)
    prefix = int(kl_batch["encoder_attention_mask"].sum())
    continuation = int(kl_batch["continuation_mask"].sum())
    kl_flops = (flops(prefix, length // 2, False, 2) + flops(continuation + batch * (k + 1), length // 2, True, 2)
                + flops(batch * (length + 1), length, True, 1))

    def kl_step():
        objective(model, kl_batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # SimCSE step: the batch twice through the encoder (dropout views), InfoNCE
    features = model.collate([e["input_ids"] for e in examples])
    simcse_tokens = int(features["attention_mask"].sum())

    def simcse_step():
        a = model(dict(features))["sentence_embedding"]
        b = model(dict(features))["sentence_embedding"]
        logits = torch.nn.functional.normalize(a.float(), dim=-1) @ torch.nn.functional.normalize(b.float(), dim=-1).T / 0.05
        torch.nn.functional.cross_entropy(logits, torch.arange(batch, device=logits.device)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def encode():
        with torch.inference_mode():
            model(dict(features))

    results = {
        "stage-1 KL step": (measure(kl_step, args.steps, args.device), prefix + continuation + batch * (length + k + 1), kl_flops),
        "SimCSE step": (measure(simcse_step, args.steps, args.device), 2 * simcse_tokens, flops(2 * simcse_tokens, length, False, 2)),
        "encode (forward)": (measure(encode, args.steps, args.device), simcse_tokens, flops(simcse_tokens, length, False, 1)),
    }
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or next((v for key, v in PEAK_TFLOPS.items() if key in name), None)
    print(f"device={name}, shape={args.shape} ({(body + head) / 1e9:.2f}B params), batch={batch}, length={length}, "
          f"dtype={args.dtype}, attn={args.attn}, {args.steps} timed steps")
    print(f"{'path':<20}{'s/step':>10}{'tokens/s':>14}{'TFLOP/s':>10}{'MFU':>8}")
    for label, (seconds, tokens, model_flops) in results.items():
        tflops = model_flops / seconds / 1e12
        mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
        print(f"{label:<20}{seconds:>10.4f}{tokens / seconds:>14.0f}{tflops:>10.2f}{mfu:>8}")
    if args.device.startswith("cuda"):
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
