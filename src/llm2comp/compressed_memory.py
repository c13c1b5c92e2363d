"""A compressed memory: each text's memory vectors as the frozen decoder reads them, with the model that made them.

`compress` (`compressor.py`) makes one; `generate` and `reconstruct` (`generation.py`) read it. Saved and loaded as
safetensors (metadata in the header, no pickle); a model other than the one that made it is refused
(`MemoryMismatchError`), by a fingerprint of what decides the memory and how the decoder reads it (`model_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "llm2comp-compressed-memory"
FORMAT_VERSION = "1"


class MemoryMismatchError(ValueError):
    """A compressed memory used with a model other than the one that made it."""


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    # bfloat16 bytes: the same fingerprint whether the model was loaded in float32 or bfloat16
    data = tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
    digest.update(data)


def model_fingerprint(model) -> str:
    """What decides a model's memory and how its decoder reads it, hashed (16 hex digits): a slice of the backbone's
    input embeddings, the memory tokens, the bridge, the adapters (live and merged), k and the encoder's attention.
    Independent of the dtype the model was loaded in (weights hashed at bfloat16 precision) and of the device."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"k": model.config.num_memory_tokens, "bidirectional": model.config.bidirectional,
                              "bridge": model.config.memory_bridge}, sort_keys=True).encode())
    embedding = model.hf_model.get_input_embeddings().weight
    _hash_tensor(digest, "embedding", embedding[:64])
    _hash_tensor(digest, "memory", model.memory.weight)
    if model.memory_bridge is not None:
        for name, tensor in sorted(model.memory_bridge.state_dict().items()):
            _hash_tensor(digest, f"bridge.{name}", tensor)
    for index, (_, state) in enumerate(model._merged):
        for name, tensor in sorted(state.items()):
            _hash_tensor(digest, f"merged{index}.{name}", tensor)
    for name, tensor in sorted((n, p) for n, p in model.hf_model.named_parameters() if "lora_" in n):
        _hash_tensor(digest, f"live.{name}", tensor)
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- the memory object
@dataclass
class CompressedMemory:
    """Memory vectors as the frozen decoder reads them, per text: ``vectors`` (n, L, d), float32 on the CPU, text i
    holding the first ``lengths[i]`` rows (k per segment); ``text_tokens[i]``: the text tokens compressed (special
    prefix excluded; after truncation). ``base_model`` and ``fingerprint`` (`model_fingerprint`) name the model."""

    vectors: torch.Tensor
    lengths: torch.Tensor
    text_tokens: torch.Tensor
    base_model: str
    fingerprint: str
    num_memory_tokens: int
    segment_tokens: int | None = None
    info: dict = field(default_factory=dict)  # objective, memory_bridge, hidden_size, truncated: for the reader

    def __post_init__(self):
        self.lengths = torch.as_tensor(self.lengths, dtype=torch.long)
        self.text_tokens = torch.as_tensor(self.text_tokens, dtype=torch.long)
        if self.vectors.ndim != 3 or self.lengths.shape != (self.vectors.shape[0],) or self.text_tokens.shape != self.lengths.shape:
            raise ValueError(f"inconsistent compressed memory: vectors {tuple(self.vectors.shape)}, lengths "
                             f"{tuple(self.lengths.shape)}, text_tokens {tuple(self.text_tokens.shape)}")
        if len(self.lengths) and int(self.lengths.max()) > self.vectors.shape[1]:
            raise ValueError("inconsistent compressed memory: a length exceeds the vectors stored")

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def __getitem__(self, index) -> CompressedMemory:
        """The memories of some texts (an int, a slice or a sequence of indices), as a CompressedMemory."""
        if isinstance(index, int):
            index = [index]
        index = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        lengths = self.lengths[index]
        width = int(lengths.max()) if len(lengths) else 0
        return CompressedMemory(self.vectors[index, :width].clone(), lengths, self.text_tokens[index], self.base_model,
                                self.fingerprint, self.num_memory_tokens, self.segment_tokens, dict(self.info))

    def rows(self) -> list[torch.Tensor]:
        """Each text's memory, (lengths[i], d)."""
        return [self.vectors[i, : int(n)] for i, n in enumerate(self.lengths)]

    @property
    def hidden_size(self) -> int:
        return self.vectors.shape[-1]

    def segments(self, i: int) -> list[int]:
        """Text tokens in each of text i's segments (one segment without ``segment_tokens``)."""
        total = int(self.text_tokens[i])
        if not self.segment_tokens:
            return [total]
        counts = [self.segment_tokens] * (total // self.segment_tokens)
        if total % self.segment_tokens or not counts:
            counts.append(total % self.segment_tokens)
        return counts

    def check(self, model) -> None:
        """A `MemoryMismatchError` unless ``model`` is the one this memory was made with."""
        mine = model_fingerprint(model)
        if mine != self.fingerprint or self.hidden_size != model.get_sentence_embedding_dimension():
            raise MemoryMismatchError(
                f"this memory was compressed by another model (base {self.base_model}, fingerprint {self.fingerprint}, "
                f"width {self.hidden_size}) than the one given (base {model.config.base_model}, fingerprint {mine}, "
                f"width {model.get_sentence_embedding_dimension()}); a decoder reads only the memory of its own compressor: "
                "compress the texts again with this model")

    # -------------------------------------------------------------------------------------------- files
    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "base_model": self.base_model, "fingerprint": self.fingerprint,
                "num_memory_tokens": str(self.num_memory_tokens), "segment_tokens": str(self.segment_tokens or 0),
                "info": json.dumps(self.info, sort_keys=True)}

    def save(self, path: str | Path) -> Path:
        """Write a .safetensors file (tensors vectors, lengths, text_tokens; the rest in its header), atomically."""
        import os

        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tensors = {"vectors": self.vectors.detach().float().cpu().contiguous(), "lengths": self.lengths.cpu().contiguous(),
                   "text_tokens": self.text_tokens.cpu().contiguous()}
        save_file(tensors, str(tmp), metadata=self.metadata())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> CompressedMemory:
        """Read a file written by `save`; with ``model``, a `MemoryMismatchError` unless it is the model that made it."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"compressed memory not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"{path} is not a compressed memory written by llm2comp (no '{FORMAT}' header)")
                if meta.get("version") != FORMAT_VERSION:
                    raise ValueError(f"{path}: compressed memory format version {meta.get('version')}, this llm2comp reads {FORMAT_VERSION}")
                tensors = {name: handle.get_tensor(name) for name in ("vectors", "lengths", "text_tokens")}
        except ValueError:
            raise
        except Exception as exc:  # a truncated or foreign file
            raise ValueError(f"{path}: not a readable compressed memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        memory = cls(tensors["vectors"], tensors["lengths"], tensors["text_tokens"], meta["base_model"], meta["fingerprint"],
                     int(meta["num_memory_tokens"]), int(meta.get("segment_tokens") or 0) or None, json.loads(meta.get("info") or "{}"))
        if model is not None:
            memory.check(model)
        return memory
