"""Why do memory-token embeddings fail? The diagnostics of issue 11, for one or more models, on STS pairs.

    python scripts/diagnose_embeddings.py --models smollm2-135m-kl smollm2-135m@causal --pairs 300 --output docs/diagnosis

A model spec is a name for `LLM2Comp.from_pretrained`, optionally followed by ``@causal`` / ``@bidirectional``
(the encoder's attention at inference) and ``@init=PHRASE`` (memory tokens initialised from a phrase).
Per model it reports, on the first ``--pairs`` pairs of an STS split (default STS-B *test*, as in the issue;
diagnosis only, nothing is fitted or selected on it):

- Spearman x100 of the pair cosine with the gold score, with the pair's mean token length and with its length
  difference; the mean cosine between the embeddings of different texts;
- position: the cosine between a text's embedding and the same text's embedding with every position shifted by
  +32 (RoPE only sees relative offsets inside the text, but the memory slots' absolute positions move with length),
  against the cosine between different texts; R^2 of a linear fit of the embedding on the text length;
- structure of the memory states: per-slot norms, cosine between the k slots of one text, cosine of one slot
  across texts, the first principal component's share of the embedding variance;
- how much the frozen decoder uses the memory: KL pretext loss (nats/token) on news passages with the text's own
  memory, another text's memory, and no memory;
- per-layer STS curve (Spearman of memory-slot mean and token mean at every layer), also as a PNG.
Writes ``diagnosis.json`` and ``layers.png`` to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from llm2comp import LLM2Comp
from llm2comp.attention import bidirectional
from llm2comp.data.builtin_pairs import data_dir
from llm2comp.data.corpus import read_jsonl


def load_model(spec: str) -> tuple[LLM2Comp, str]:
    name, *options = spec.split("@")
    kwargs = {}
    for option in options:
        if option in ("causal", "bidirectional"):
            kwargs["bidirectional"] = option == "bidirectional"
        elif option.startswith("init="):
            kwargs["memory_init"] = option[len("init="):]
        else:
            raise SystemExit(f"unknown model option @{option}")
    return LLM2Comp.from_pretrained(name, **kwargs).eval(), spec


@torch.inference_mode()
def states(model: LLM2Comp, texts: list[str], shift: int = 0, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per text: memory states of every layer (L+1, n, k, d) and token-mean states of every layer (L+1, n, d)."""
    ids = model.token_ids(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    memory, mean = None, None
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        features = model.collate([ids[i] for i in index])
        embeds = model.embed_inputs(features)
        positions = torch.arange(embeds.shape[1])[None].expand(len(index), -1) + shift
        with bidirectional(model.hf_model, model.config.bidirectional) as kwargs:
            out = model.body(inputs_embeds=embeds, attention_mask=features["attention_mask"], position_ids=positions,
                             output_hidden_states=True, use_cache=False, **kwargs)
        hidden = torch.stack(out.hidden_states).float()  # (L+1, b, t, d)
        mask = features["memory_mask"]
        text = features["attention_mask"].bool() & ~mask
        m = hidden[:, mask].view(hidden.shape[0], len(index), -1, hidden.shape[-1])
        t = (hidden * text[None, ..., None]).sum(2) / text.sum(1).clamp(min=1)[None, :, None]
        if memory is None:
            memory = torch.zeros(hidden.shape[0], len(texts), m.shape[2], hidden.shape[-1])
            mean = torch.zeros(hidden.shape[0], len(texts), hidden.shape[-1])
        memory[:, torch.tensor(index)] = m
        mean[:, torch.tensor(index)] = t
    return {"memory": memory, "mean": mean, "lengths": torch.tensor([len(r) for r in ids], dtype=torch.float32)}


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def spearman(x, y) -> float:
    return float(100 * spearmanr(np.asarray(x), np.asarray(y)).statistic)


def mean_offdiagonal(matrix: torch.Tensor) -> float:
    n = matrix.shape[0]
    return float((matrix.sum() - matrix.diagonal().sum()) / (n * n - n))


def length_r2(embeddings: torch.Tensor, lengths: torch.Tensor) -> float:
    """Share of the embeddings' variance explained by a linear function of the token length."""
    x = torch.stack([torch.ones_like(lengths), lengths], 1).double()
    y = embeddings.double() - embeddings.double().mean(0)
    coef = torch.linalg.lstsq(x, y).solution
    residual = y - x @ coef
    return float(1 - residual.pow(2).sum() / y.pow(2).sum())


@torch.no_grad()
def decoder_dependence(model: LLM2Comp, passages: list[str], max_tokens: int = 128) -> dict[str, float]:
    """KL pretext loss (nats/token) with the text's own memory, another text's (rolled by one), none, and the own
    memory rescaled to the mean norm of the input token embeddings (what the decoder's first layer is used to)."""
    from llm2comp.objectives.pretext import CompressionObjective

    objective = CompressionObjective(model, kind="kl", seed=0)
    rows = model.tokenizer(passages, add_special_tokens=False)["input_ids"]
    batch = objective.collate([{"input_ids": r[:max_tokens], "index": i} for i, r in enumerate(rows)])
    original = objective.decoder_inputs
    results = {}
    scale = float(model.hf_model.get_input_embeddings().weight.norm(dim=-1).mean())
    rescale = lambda m: m / m.norm(dim=-1, keepdim=True) * scale  # noqa: E731
    for name, change in (("own", lambda m: m), ("other", lambda m: m.roll(1, 0)), ("none", lambda m: m[:, :0]),
                         ("own_rescaled", rescale)):
        objective.decoder_inputs = lambda mdl, memory, b, change=change: original(mdl, change(memory), b)
        results[name] = float(objective(model, batch)["loss"])
    return results


def diagnose(model: LLM2Comp, pairs: list[dict], passages: list[str]) -> dict:
    first = [p["sentence1"] for p in pairs]
    second = [p["sentence2"] for p in pairs]
    gold = [float(p["score"]) for p in pairs]
    a, b = states(model, first), states(model, second)
    a_shift = states(model, first, shift=32)
    mem_a, mem_b = a["memory"][-1], b["memory"][-1]  # (n, k, d), final layer
    emb_a, emb_b = mem_a.mean(1), mem_b.mean(1)
    pair_cos = cosine(emb_a, emb_b)
    everything = torch.cat([emb_a, emb_b])
    unit = torch.nn.functional.normalize(everything, dim=-1)
    lengths = torch.cat([a["lengths"], b["lengths"]])
    centred = everything - everything.mean(0)
    singular = torch.linalg.svdvals(centred.double())
    slots = torch.nn.functional.normalize(mem_a, dim=-1)
    slot_cos = (slots @ slots.transpose(1, 2)).mean(0)
    across = [mean_offdiagonal(slots[:, j] @ slots[:, j].T) for j in range(slots.shape[1])]
    layers = a["memory"].shape[0]
    result = {
        "sts_spearman": spearman(pair_cos, gold),
        "spearman_with_mean_length": spearman(pair_cos, (a["lengths"] + b["lengths"]) / 2),
        "spearman_with_length_difference": spearman(pair_cos, (a["lengths"] - b["lengths"]).abs()),
        "mean_cosine_between_texts": mean_offdiagonal(unit @ unit.T),
        "cosine_same_text_shifted_32": float(cosine(emb_a, a_shift["memory"][-1].mean(1)).mean()),
        "length_r2": length_r2(everything, lengths),
        "slot_norms": [float(x) for x in mem_a.norm(dim=-1).mean(0)],
        "token_state_norm": float(a["mean"][-1].norm(dim=-1).mean()),
        "cosine_between_slots": mean_offdiagonal(slot_cos),
        "cosine_of_a_slot_across_texts": across,
        "pc1_share": float(singular[0] ** 2 / (singular ** 2).sum()),
        "per_layer_memory": [spearman(cosine(a["memory"][l].mean(1), b["memory"][l].mean(1)), gold) for l in range(1, layers)],
        "per_layer_mean": [spearman(cosine(a["mean"][l], b["mean"][l]), gold) for l in range(1, layers)],
    }
    if passages:
        result["decoder_kl"] = decoder_dependence(model, passages)
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in results.items():
        line, = ax.plot(range(1, len(r["per_layer_memory"]) + 1), r["per_layer_memory"], label=f"{name}: memory")
        ax.plot(range(1, len(r["per_layer_mean"]) + 1), r["per_layer_mean"], "--", color=line.get_color(), label=f"{name}: token mean")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("STS Spearman x100")
    ax.set_title("Which layer's states carry similarity (first STS pairs)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-kl"])
    parser.add_argument("--task", default="STSBenchmark")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--passages", type=int, default=16, help="news passages for the decoder-dependence check (0: skip)")
    parser.add_argument("--output", default="docs/diagnosis")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = read_jsonl(data_dir() / "mteb" / args.task / f"{args.split}.jsonl")[: args.pairs]
    passages = []
    if args.passages:
        from llm2comp.data.corpus import load_texts

        passages = [t for t in load_texts("builtin:news") if len(t) > 400][: args.passages]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = {}
    for spec in args.models:
        model, name = load_model(spec)
        results[name] = diagnose(model, pairs, passages if model.config.pooling == "memory" else [])
        r = results[name]
        print(f"{name}: STS {r['sts_spearman']:.1f} | with mean length {r['spearman_with_mean_length']:.1f} | "
              f"with length diff {r['spearman_with_length_difference']:.1f} | mean cos {r['mean_cosine_between_texts']:.2f} | "
              f"shifted-self cos {r['cosine_same_text_shifted_32']:.2f} | length R2 {r['length_r2']:.2f} | "
              f"slot cos {r['cosine_between_slots']:.2f} | PC1 {r['pc1_share']:.2f} | decoder {r.get('decoder_kl')}", flush=True)
        (output / "diagnosis.json").write_text(json.dumps({"task": args.task, "split": args.split, "pairs": len(pairs), "models": results}, indent=1))
    plot(results, output / "layers.png")
    print(f"wrote {output / 'diagnosis.json'} and {output / 'layers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
