"""Saving and loading llm2comp models: one directory with the llm2comp config (JSON), the memory tokens, the fitted
normalizer and every LoRA adapter (safetensors), and the tokenizer; written atomically, read back into an `LLM2Comp`.
Also the trained models shipped inside the package (their aliases)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import staging_dir
from .backbone import ALIASES, TRAINED_ALIAS_NAMES, load_backbone
from .memory import MemoryBridge, MemoryTokens
from .pooling import Normalizer
from .version import __version__

CONFIG_NAME = "llm2comp_config.json"
EXPORT_KEY = "exported_from"  # written by `export` beside the config fields: where the folder came from
MEMORY_NAME = "memory_tokens.safetensors"
NORMALIZER_NAME = "normalizer.safetensors"
BRIDGE_NAME = "memory_bridge.safetensors"


def _shipped(name: str):
    def locate() -> Path:
        from importlib import resources

        return Path(str(resources.files("llm2comp") / "resources" / name))

    return locate


# Trained models shipped inside the package (small: adapter + memory tokens; the backbone comes from its alias);
# what each is: backbone.TRAINED_ALIAS_NAMES. smollm2-135m-kl: 80 steps of KL pre-training only, kept for the
# diagnosis in docs/results/default-model.md.
TRAINED_ALIASES = {name: _shipped(name) for name in TRAINED_ALIAS_NAMES}


@contextlib.contextmanager
def quiet_peft():
    """peft reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning on every
    load: noise that suggests something is wrong. Only that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _inside(folder: Path, entry: str, what: str) -> Path:
    """``folder / entry`` where that stays inside ``folder``; a saved config never points elsewhere by itself."""
    target = (folder / entry).resolve()
    if Path(entry).is_absolute() or not target.is_relative_to(folder.resolve()):
        raise ValueError(f"{folder}: the saved config's {what} '{entry}' points outside the model folder; refusing it")
    return target


def resolve_base_model(folder: Path, saved: str, given: str | None = None) -> str:
    """The backbone a saved folder is loaded on: ``given`` (the caller's word) when passed; else the saved entry
    when it is a folder bundled inside ``folder``, an absolute path, or a name (an alias or a hub id); a relative
    path that leaves the folder, or that would be read against the working directory, is refused."""
    if given is not None:
        return str(given)
    if saved in ALIASES:
        return saved
    entry = Path(saved).expanduser()
    if entry.is_absolute():
        return str(entry)
    if (folder / entry / "config.json").is_file():  # a bundled backbone (export)
        return str(_inside(folder, saved, "base_model"))
    if ".." in entry.parts or saved.startswith((".", "~")) or entry.exists():
        raise ValueError(
            f"{folder}: the saved config's base_model '{saved}' is a relative path outside the model folder (it would be "
            "read against the working directory); pass the backbone yourself: from_pretrained(..., base_model=PATH_OR_HUB_ID)")
    return saved  # a hub id


def check_config_keys(data: dict, known: set[str], path: Path) -> None:
    """Warn about keys this llm2comp does not know (they are dropped) and about a config written by a newer one."""
    from packaging.version import InvalidVersion, Version

    unknown = sorted(set(data) - known - {"llm2comp_version", EXPORT_KEY})
    if unknown:
        warnings.warn(f"{path / CONFIG_NAME}: unknown key(s) {', '.join(unknown)} ignored", UserWarning, stacklevel=3)
    written = data.get("llm2comp_version")
    try:
        newer = written is not None and Version(str(written)) > Version(__version__)
    except InvalidVersion:
        newer = True
    if newer:
        warnings.warn(f"{path} was written by llm2comp {written}, newer than this {__version__}: it may not load or "
                      "embed as intended; upgrade llm2comp", UserWarning, stacklevel=3)


def load_saved(cls, path: Path, overrides: dict, device=None, dtype=None, trust_remote_code: bool = False,
               base_model: str | None = None, **hf_kwargs):
    """An `LLM2Comp` (`cls`) from a directory written by `save_model`: backbone, tokenizer, memory tokens,
    normalizer and adapters (the first `merged_adapters` folded into the weights).

    The folder decides nothing about trust: remote code runs only with the caller's ``trust_remote_code=True``
    (a folder saved from such a backbone is refused without it), and the backbone and adapters it names must lie
    inside it, or be a name or an absolute path (`resolve_base_model`); ``base_model`` replaces the saved one."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    data = json.loads((path / CONFIG_NAME).read_text())
    config_class = cls.config_class
    known = {f.name for f in dataclasses.fields(config_class)}
    check_config_keys(data, known, path)
    config = config_class(**{k: v for k, v in data.items() if k in known})
    if config.trust_remote_code and not trust_remote_code:
        raise ValueError(f"{path} was saved from a backbone that runs its own Python code (trust_remote_code); llm2comp "
                         "never runs it because a folder says so. If you trust it, pass trust_remote_code=True "
                         "(CLI: --trust-remote-code)")
    # a saved model keeps its attention under another pooling unless told otherwise (replace keeps the field)
    config = dataclasses.replace(config, **overrides, trust_remote_code=trust_remote_code,
                                 base_model=resolve_base_model(path, config.base_model, base_model))
    adapter_dirs = [_inside(path, adapter, "adapter") for adapter in config.adapters]
    hf_model, tokenizer = load_backbone(
        config.base_model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **hf_kwargs
    )
    if (path / "tokenizer_config.json").is_file():  # else (a shipped adapter) the backbone's own tokenizer
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    memory_weight = load_file(path / MEMORY_NAME)["weight"]
    memory = MemoryTokens(memory_weight.shape[0], memory_weight.shape[1], init=memory_weight)
    if memory.num_tokens != config.num_memory_tokens:
        raise ValueError(f"{path}: saved with {memory.num_tokens} memory tokens, asked for {config.num_memory_tokens}")
    model = cls(hf_model, tokenizer, config, memory=memory.to(hf_model.device))
    if config.normalizer is not None:
        if not (path / NORMALIZER_NAME).is_file():
            raise FileNotFoundError(f"{path}: the config names a fitted normalizer but {NORMALIZER_NAME} is missing")
        stats = load_file(path / NORMALIZER_NAME)
        model.normalizer = Normalizer(stats["mean"], stats["scale"], stats.get("rotation")).to(hf_model.device)
    if config.memory_bridge is not None:
        load_bridge(model, path)
    for index, adapter in enumerate(adapter_dirs):
        with quiet_peft():
            peft_model = PeftModel.from_pretrained(model.hf_model, adapter, is_trainable=True)
        model.__dict__["_peft"] = peft_model
        if index < config.merged_adapters:
            model.merge_and_unload()
    return model


def load_bridge(model, path: Path) -> None:
    """The stage-1 memory bridge saved in ``path`` into ``model`` (its kind from the model's config)."""
    if not (path / BRIDGE_NAME).is_file():
        raise FileNotFoundError(f"{path}: the config names a memory bridge but {BRIDGE_NAME} is missing")
    state = load_file(path / BRIDGE_NAME)
    bridge = MemoryBridge(model.config.memory_bridge, state["bias"].shape[0])
    bridge.load_state_dict(state)
    model.memory_bridge = bridge.to(model.device)


def save_normalizer(model, folder: Path) -> None:
    """The fitted normalizer's statistics (`normalizer.safetensors`), where the model has one."""
    if model.normalizer is not None:
        save_file(model.normalizer.state(), folder / NORMALIZER_NAME)


def save_model(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write config JSON, memory tokens, every LoRA adapter (safetensors) and the tokenizer.

    Files are written to a staging directory first and moved in, the config last: a kill never leaves
    a half-written file, and other content of ``path`` (checkpoints, logs) is kept.

    ``state_dict`` (keys as in ``self.state_dict()``), when given, supplies the trainable tensors instead
    of the live parameters: under ZeRO-3/FSDP those are shards, and the trainer passes the gathered ones.
    """
    from peft import get_peft_model_state_dict

    path = Path(path)
    staging = staging_dir(path)
    try:
        adapters = list(self._merged)
        if self.peft_model is not None:
            active = self.peft_model.peft_config["default"].to_dict()
            gathered = None
            if state_dict is not None:
                gathered = {"base_model.model." + k[len("hf_model."):]: v for k, v in state_dict.items() if k.startswith("hf_model.")}
            peft_state = get_peft_model_state_dict(self.peft_model, state_dict=gathered, save_embedding_layers=False)
            state = {k: v.detach().cpu().contiguous() for k, v in peft_state.items()}
            adapters.append((active, state))
        names = []
        for index, (adapter_config, state) in enumerate(adapters):
            name = f"adapters/{index}"
            (staging / name).mkdir(parents=True)
            adapter_config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in adapter_config.items()}
            adapter_config["base_model_name_or_path"] = self.config.base_model
            (staging / name / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, default=str))
            save_file({k: v.contiguous() for k, v in state.items()}, staging / name / "adapter_model.safetensors")
            names.append(name)
        config = dataclasses.replace(
            self.config,
            adapters=names,
            merged_adapters=len(self._merged),
        )
        memory = state_dict.get("memory.weight", self.memory.weight) if state_dict is not None else self.memory.weight
        save_file({"weight": memory.detach().float().cpu().contiguous()}, staging / MEMORY_NAME)
        save_normalizer(self, staging)
        if self.memory_bridge is not None:
            bridge = {name: (state_dict or {}).get(f"memory_bridge.{name}", tensor) for name, tensor in self.memory_bridge.state_dict().items()}
            save_file({k: v.detach().float().cpu().contiguous() for k, v in bridge.items()}, staging / BRIDGE_NAME)
        self.tokenizer.save_pretrained(staging)
        payload = dataclasses.asdict(config) | {"llm2comp_version": __version__}
        (staging / CONFIG_NAME).write_text(json.dumps(payload, indent=2))
        replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    self.config = config
    return path


def replace_dir(staging: Path, target: Path) -> None:
    """Move every entry of a fully written staging directory into ``target``; other entries of ``target``
    (checkpoints, logs) stay. The config file moves last, so a directory with a config is complete."""
    target.mkdir(parents=True, exist_ok=True)
    entries = sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_NAME)
    for entry in entries:
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            trash = target / f".{entry.name}.old-{os.getpid()}"
            os.replace(destination, trash)
            os.replace(entry, destination)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(entry, destination)
    staging.rmdir()
