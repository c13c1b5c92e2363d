"""Copy a trained run's adapter + memory tokens into the package (src/llm2comp/resources/<name>), in float16.

    python scripts/ship_adapter.py runs/default smollm2-135m-sup
The backbone is not copied: the shipped config names it by alias, and its tokenizer is used. A fitted
normalizer is copied as it is (float32, 2 x d values).
"""

import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def main(run: str, name: str) -> None:
    run, target = Path(run), Path(__file__).parent.parent / "src" / "llm2comp" / "resources" / name
    config = json.loads((run / "llm2comp_config.json").read_text())
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for adapter in config["adapters"]:
        (target / adapter).mkdir(parents=True)
        shutil.copy(run / adapter / "adapter_config.json", target / adapter / "adapter_config.json")
        tensors = load_file(run / adapter / "adapter_model.safetensors")
        save_file({k: v.half().contiguous() for k, v in tensors.items()}, target / adapter / "adapter_model.safetensors")
    shutil.copy(run / "memory_tokens.safetensors", target / "memory_tokens.safetensors")
    if config.get("normalizer"):
        shutil.copy(run / "normalizer.safetensors", target / "normalizer.safetensors")
    if config.get("memory_bridge"):  # a stage-1 compressor: what its frozen decoder reads (float32, d x d at most)
        shutil.copy(run / "memory_bridge.safetensors", target / "memory_bridge.safetensors")
    config["max_length"] = 512
    (target / "llm2comp_config.json").write_text(json.dumps(config, indent=2))
    print(f"shipped {run} as {target} ({sum(p.stat().st_size for p in target.rglob('*') if p.is_file()) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
