"""Does stage 1 compress? Short stage-1 runs of the embedded default, one per lever, each probed while it trains.

Every run: KL continuation distillation on builtin:news paragraphs cut to 64 tokens, the same data order, batch 8,
the compression probe every --probe-steps steps on 64 held-out passages (probe.jsonl), then the full probe (256
passages, with the free-vector ceiling) on the final model. Levers (docs/results/pretext.md 3.5): the learning rate, a
stage-1 bridge between memory states and the frozen decoder, a learning rate of its own for the memory tokens and
the bridge, an own-vs-other memory contrast term, the objective (RC autoencoding instead of KL), and the attention of the encoder.

    python scripts/compression_levers.py train --levers base,bridge-affine,lr1e-3-bridge-affine,lr1e-3-bridge-linear --steps 120
    python scripts/compression_levers.py report            # table (markdown) + docs/figures/compression-levers.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHRASE = ' means in one word:"'
BASE = dict(stage="pretrain", objective="kl", model="smollm2-135m", data="builtin:news", bidirectional=False,
            memory_init=PHRASE, max_length=73, batch_size=8, learning_rate=1e-4, warmup_steps=10, save_steps=40,
            save_total_limit=1, probe_passages=64, probe_text_tokens=64)
# name -> what differs from BASE
LEVERS = {
    "base": {},
    "lr1e-3": {"learning_rate": 1e-3},
    "bridge-affine": {"memory_bridge": "affine", "memory_lr": 1e-3},
    "bridge-linear": {"memory_bridge": "linear", "memory_lr": 1e-3},
    "lr1e-3-bridge-affine": {"learning_rate": 1e-3, "memory_bridge": "affine", "memory_lr": 1e-3},
    "lr1e-3-bridge-linear": {"learning_rate": 1e-3, "memory_bridge": "linear", "memory_lr": 1e-3},
    "lr1e-3-bridge-affine-contrast": {"learning_rate": 1e-3, "memory_bridge": "affine", "memory_lr": 1e-3, "contrast_weight": 1.0},
    "rc-lr1e-3-bridge-linear": {"objective": "rc", "learning_rate": 1e-3, "memory_bridge": "linear", "memory_lr": 1e-3},
    "bidirectional-paper": {"bidirectional": True, "memory_init": None},
}


def train_levers(args) -> None:
    from llm2comp.training.config import TrainConfig
    from llm2comp.training.run import train

    for name in args.levers.split(","):
        output = Path(args.runs) / name
        if (output / "llm2comp_config.json").is_file():
            print(f"[{name}] done already: {output}")
            continue
        settings = {**BASE, **LEVERS[name], "model": args.model, "output": str(output), "max_steps": args.steps,
                    "probe_steps": args.probe_steps, "seed": args.seed, "resume": (output / "checkpoints").is_dir()}
        started = time.time()
        train(TrainConfig.from_dict(settings))
        (output / "train_time.json").write_text(json.dumps({"seconds": time.time() - started, "steps": args.steps}))
        print(f"[{name}] {time.time() - started:.0f}s")


def final_probe(output: Path, ceiling_passages: int) -> dict:
    from llm2comp import LLM2Comp
    from llm2comp.evaluation.compression import CompressionProbe, ceiling, probe_passages

    path = output / "probe-final.json"
    if path.is_file():
        return json.loads(path.read_text())
    model = LLM2Comp.from_pretrained(output)
    objective = model.config.stages[-1]["objective"]
    passages = probe_passages(model.tokenizer, "builtin:news", 256, 64)
    probe = CompressionProbe(passages, "reconstruction" if objective == "rc" else "continuation")
    if ceiling_passages:
        probe.ceiling = ceiling(model, probe, passages=ceiling_passages)
    report = probe.run(model)
    path.write_text(json.dumps(report, indent=2))
    return report


def report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, backbones = [], set()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in LEVERS:
        output = Path(args.runs) / name
        if not (output / "llm2comp_config.json").is_file():
            continue
        final = final_probe(output, args.ceiling_passages)
        backbones.add(json.loads((output / "llm2comp_config.json").read_text()).get("base_model", "?"))
        probes = [json.loads(line) for line in (output / "probe.jsonl").read_text().splitlines() if line.strip()]
        timing = json.loads((output / "train_time.json").read_text()) if (output / "train_time.json").is_file() else {}
        ax.plot([p["step"] for p in probes], [p["gain"] for p in probes], "-o", markersize=3, label=name)
        loss = final["loss"]
        ceiling = final.get("ceiling", {})
        rows.append(f"| {name} | {final['metric']} | {loss['own']:.3f} | {loss['other']:.3f} | {loss['none']:.3f} | "
                    f"{final['gain']:.3f} | {final['specificity']:.2f} | "
                    f"{ceiling.get('share', float('nan')):.1%} | {timing.get('seconds', float('nan')) / 60:.0f} |")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("optimizer step (batch 8, 64-token texts)")
    ax.set_ylabel("compression gain 1 - own/none (64 passages)")
    ax.set_title(f"stage-1 levers on {', '.join(sorted(backbones))}: does the memory carry the text?", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figure = ROOT / "docs" / "figures" / f"{args.figure}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    print("| lever | metric | own | other | none | gain | specificity | share of ceiling | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"plot: {figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="phase", required=True)
    p = sub.add_parser("train")
    p.add_argument("--levers", default=",".join(LEVERS))
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--model", default=BASE["model"], help="backbone (alias, hub id or local dir)")
    p.add_argument("--runs", default="runs/levers")
    p.set_defaults(func=train_levers)
    p = sub.add_parser("report")
    p.add_argument("--runs", default="runs/levers")
    p.add_argument("--ceiling-passages", type=int, default=32)
    p.add_argument("--figure", default="compression-levers", help="name of the PNG under docs/figures")
    p.set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
