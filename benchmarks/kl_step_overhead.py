"""Host overhead of the stage-1 KL step, made visible: our step (`CompressionObjective`, chunked LM head under
activation checkpointing, one model copy with the adapter switched off for the decoder and teacher) against the
same computation written as plain Hugging Face forward/backward passes on the very same tokens (encoder pass with
LoRA, decoder pass and teacher pass with the adapter off, full-vocabulary logits, `F.kl_div`). Measured side by
side, interleaved over rounds; the losses of both paths are printed and must agree.

    python benchmarks/kl_step_overhead.py --model smollm2-135m --batch-size 8 --length 128
    python benchmarks/kl_step_overhead.py --model tiny --batch-size 4 --length 64        # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F


def plain_kl_step(model, batch) -> torch.Tensor:
    """The KL step as plain HF passes: no chunking, no checkpointing, full-vocabulary logits."""
    from llm2comp.objectives.pretext import decoder_bos, lm_logits

    encoder = {k[len("encoder_"):]: v for k, v in batch.items() if k.startswith("encoder_")}
    embeds = model.hf_model.get_input_embeddings()(encoder["input_ids"])
    embeds = model.memory(embeds, encoder["memory_mask"])
    from llm2comp.attention import bidirectional

    with bidirectional(model.hf_model, model.config.bidirectional) as kwargs:
        hidden = model.body(inputs_embeds=embeds, attention_mask=encoder["attention_mask"], use_cache=False, **kwargs).last_hidden_state
    k = model.config.num_memory_tokens
    memory = hidden[encoder["memory_mask"]].view(hidden.shape[0], k, hidden.shape[-1])
    embed = model.hf_model.get_input_embeddings()
    bos = decoder_bos(model.tokenizer)
    parts = [memory, embed(batch["continuation_ids"])]
    mask = [torch.ones(memory.shape[:2], dtype=torch.long), batch["continuation_mask"]]
    if bos:
        bos_ids = torch.full((memory.shape[0], 1), bos[0], dtype=torch.long)
        parts.insert(0, embed(bos_ids))
        mask.insert(0, torch.ones_like(bos_ids))
    inputs, attention = torch.cat(parts, 1), torch.cat(mask, 1)
    with model.peft_model.disable_adapter():
        decoded = model.body(inputs_embeds=inputs, attention_mask=attention, use_cache=False).last_hidden_state
        with torch.no_grad():
            teacher = model.body(input_ids=batch["teacher_ids"], attention_mask=batch["teacher_mask"], use_cache=False).last_hidden_state
    first = inputs.shape[1] - batch["continuation_ids"].shape[1] - 1
    valid = batch["continuation_mask"].bool()
    student = decoded[:, first : first + valid.shape[1]][valid]
    offset = len(bos) + batch["prefix_lengths"] - 1
    gather = (offset[:, None] + torch.arange(valid.shape[1])[None, :]).clamp(max=teacher.shape[1] - 1)
    teacher = teacher.gather(1, gather[..., None].expand(-1, -1, teacher.shape[-1]))[valid]
    with torch.no_grad():
        target = F.log_softmax(lm_logits(model, teacher), dim=-1)
    loss = F.kl_div(F.log_softmax(lm_logits(model, student), dim=-1), target, log_target=True, reduction="sum") / student.shape[0]
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="alias/path, or 'tiny'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="tokens per text")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from llm2comp import LLM2Comp
    from llm2comp.objectives.pretext import CompressionObjective
    from llm2comp.testing import make_tiny_model_dir

    name = str(make_tiny_model_dir(tempfile.mkdtemp() + "/tiny")) if args.model == "tiny" else args.model
    model = LLM2Comp.from_pretrained(name, max_length=args.length + 16, bidirectional=False)
    model.add_lora(dropout=0.0)
    torch.manual_seed(0)
    vocab = model.vocab_size
    examples = [{"input_ids": torch.randint(3, vocab, (args.length,)).tolist(), "index": i} for i in range(args.batch_size)]
    objective = CompressionObjective(model, kind="kl")
    batch = objective.collate(examples)
    batch.pop("loss_items", None)
    params = [p for p in model.parameters() if p.requires_grad]

    def ours():
        loss = objective(model, batch)["loss"]
        loss.backward()
        return loss.item()

    def plain():
        loss = plain_kl_step(model, batch)
        loss.backward()
        return loss.item()

    losses = {"ours": ours(), "plain": plain()}  # warm-up, and the losses must agree
    times = {"ours": [], "plain": []}
    for _ in range(args.rounds):
        for label, step in (("ours", ours), ("plain", plain)):
            for p in params:
                p.grad = None
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    tokens = int(batch["encoder_attention_mask"].sum() + batch["continuation_mask"].sum() + batch["teacher_mask"].sum())
    print(f"model={args.model}, KL step, batch {args.batch_size} x {args.length} tokens, {args.rounds} interleaved rounds "
          f"(median), torch threads {torch.get_num_threads()}")
    print(f"{'path':<52}{'s/step':>10}{'tokens/s':>12}{'loss':>12}")
    print(f"{'llm2comp KL step (chunked head, checkpointed)':<52}{median['ours']:>10.4f}{tokens / median['ours']:>12.0f}{losses['ours']:>12.5f}")
    print(f"{'plain HF passes, same tokens (full logits)':<52}{median['plain']:>10.4f}{tokens / median['plain']:>12.0f}{losses['plain']:>12.5f}")
    print(f"ours / plain: {median['ours'] / median['plain']:.2f}x time; |loss difference| {abs(losses['ours'] - losses['plain']):.2e}")


if __name__ == "__main__":
    main()
