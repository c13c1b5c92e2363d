"""Command-line verbs of `generation.py`: ``compress`` (documents -> a memory file) and ``generate`` (prompts and/or a
memory file -> continuations, or with ``--reconstruct`` the texts back from an RC model's memory).

`add_parsers(subparsers)` registers them on the main parser (`cli.py`); `run_compress`/`run_generate` take the
parsed arguments and return the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_COMPRESSOR = "smollm2-135m-compressor"


def _load_model(args):
    from .model import LLM2Comp

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return LLM2Comp.from_pretrained(args.model, device=args.device)


def _documents(args) -> list[str]:
    from .data.corpus import DataError, load_texts, read_lines

    if args.input in (None, "-"):
        texts = [t for t in read_lines(args.input) if t.strip()]
    else:
        texts = load_texts(args.input, unit=args.unit, field=args.field)
    if not texts:
        raise DataError(f"no documents in {args.input or '<stdin>'}")
    return texts


def run_compress(args) -> int:
    from .generation import compress

    texts = _documents(args)  # before the model: a bad input file fails in a second, not after loading
    model = _load_model(args)
    memory = compress(model, texts, batch_size=args.batch_size, segment_tokens=args.segment_tokens,
                      allow_untrained=args.allow_untrained, show_progress_bar=True)
    path = memory.save(args.output)
    tokens = int(memory.text_tokens.sum())
    vectors = int(memory.lengths.sum())
    print(f"compressed {len(memory)} documents ({tokens:,} tokens) into {vectors:,} memory vectors "
          f"({tokens / max(1, vectors):.1f} tokens per vector) for {args.model} (fingerprint {memory.fingerprint}); "
          f"wrote {path}")
    return 0


def _prompts(args) -> list[str] | None:
    from .data.corpus import read_lines

    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += read_lines(args.prompts)
    return prompts or None


def run_generate(args) -> int:
    from .generation import CompressedMemory, generate, reconstruct

    prompts = _prompts(args)
    if args.memory is None and prompts is None:
        raise ValueError("generate needs --memory, a prompt (--prompt / --prompts), or both")
    if args.reconstruct and (args.memory is None or prompts is not None):
        raise ValueError("--reconstruct decodes the texts from --memory alone (no prompts)")
    memory = CompressedMemory.load(args.memory) if args.memory else None  # a bad file fails before the model loads
    model = _load_model(args)
    if memory is not None:
        memory.check(model)
    if args.reconstruct:
        texts = reconstruct(model, memory, max_new_tokens=args.max_new_tokens if args.max_new_tokens_given else None,
                            batch_size=args.batch_size, allow_untrained=args.allow_untrained, show_progress_bar=True)
        prompts = [""] * len(texts)
    else:
        texts = generate(model, prompts, memory=memory, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                         temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, batch_size=args.batch_size,
                         seed=args.seed, allow_untrained=args.allow_untrained, show_progress_bar=True)
        if prompts is None:
            prompts = [""] * len(texts)
        elif len(prompts) == 1 and len(texts) > 1:
            prompts = prompts * len(texts)
    records = [{"index": i, **({"memory": i if len(memory) > 1 else 0} if memory is not None else {}), "prompt": p, "text": t}
               for i, (p, t) in enumerate(zip(prompts, texts))]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if args.output:
        from .atomic import write_text_atomic

        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.output, lines)
        print(f"wrote {len(records)} generations to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(lines)
    return 0


class _MaxNewTokens(argparse.Action):
    """Records that --max-new-tokens was given (reconstruct's default is each text's own length)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.max_new_tokens_given = True


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_COMPRESSOR,
                   help=f"a stage-1 (kl/nll/rc) llm2comp model (default: {DEFAULT_COMPRESSOR})")
    p.add_argument("--batch-size", type=int, help="texts per batch")
    p.add_argument("--allow-untrained", action="store_true",
                   help="research: use a model whose stage 1 never trained a compressor (its memory is noise to the decoder)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def compress_arguments(p: argparse.ArgumentParser) -> None:
    """The ``compress`` verb's arguments."""
    _model_arguments(p)
    p.add_argument("--input", required=True, help="documents: .txt (one per line, or --unit paragraph), .jsonl/.parquet "
                   "(--field), builtin:news, or - for stdin (one per line)")
    p.add_argument("--output", required=True, help="the memory file to write (.safetensors)")
    p.add_argument("--unit", choices=["line", "paragraph"], default="line", help=".txt input: one document per line (default) or per paragraph")
    p.add_argument("--field", default="text", help=".jsonl/.parquet input: the field holding the text (default text)")
    p.add_argument("--segment-tokens", type=int, help="compress each document in segments of N tokens, k memory vectors "
                   "each (default: the whole document into k, cut at max_length)")
    p.set_defaults(func=run_compress, batch_size=16)


def generate_arguments(p: argparse.ArgumentParser) -> None:
    """The ``generate`` verb's arguments."""
    _model_arguments(p)
    p.add_argument("--memory", help="a memory file from `compress` with this model (one memory per prompt, or one for all)")
    p.add_argument("--prompt", action="append", help="text that follows the memory (repeatable); none: continue the memory")
    p.add_argument("--prompts", help="a file of prompts, one per line")
    p.add_argument("--max-new-tokens", type=int, default=32, action=_MaxNewTokens, help="tokens to generate (default 32)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--reconstruct", action="store_true",
                   help="an RC-trained model: the texts back from --memory (each as many tokens as it compressed)")
    p.add_argument("--output", help="write JSON lines (index, prompt, text) here; default: stdout")
    p.set_defaults(func=run_generate, batch_size=8, max_new_tokens_given=False)


COMPRESS_HELP = "compress documents into memory vectors the frozen LLM reads (a .safetensors file)"
GENERATE_HELP = ("generate with the frozen LLM from a memory file and/or prompts (continue the compressed text, answer "
                 "after it, or --reconstruct it)")


def add_parsers(subparsers) -> None:
    """Register the ``compress`` and ``generate`` verbs on a parser's subparsers."""
    compress_arguments(subparsers.add_parser("compress", help=COMPRESS_HELP))
    generate_arguments(subparsers.add_parser("generate", help=GENERATE_HELP))
