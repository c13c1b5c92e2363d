"""Trust boundaries of a saved model folder: it never switches on remote code by itself, the paths it names stay
inside it, and what this llm2comp cannot read in it is said, not silently dropped."""

import json
import shutil
import warnings

import pytest

from llm2comp import LLM2Comp
from llm2comp.data.corpus import DataError
from llm2comp.persistence import CONFIG_NAME

EVIL = '''
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM
class EvilConfig(LlamaConfig):
    pass
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
'''


def _hostile_folder(tiny_dir, tmp_path, bundled: bool):
    """A saved model whose backbone carries remote code (writing a marker file when imported), and whose config asks
    for trust_remote_code; the backbone bundled inside the folder or named by an absolute path."""
    marker = tmp_path / "pwned"
    folder = LLM2Comp.from_pretrained(tiny_dir).save(tmp_path / "hostile")
    backbone = shutil.copytree(tiny_dir, (folder if bundled else tmp_path) / "backbone")
    (backbone / "evil.py").write_text(EVIL.format(marker=str(marker)))
    hf_config = json.loads((backbone / "config.json").read_text())
    hf_config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (backbone / "config.json").write_text(json.dumps(hf_config))
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(trust_remote_code=True, base_model="backbone" if bundled else str(backbone))
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder, marker


@pytest.mark.parametrize("bundled", [True, False])
def test_a_folder_never_enables_remote_code_by_itself(tiny_dir, tmp_path, bundled):
    folder, marker = _hostile_folder(tiny_dir, tmp_path, bundled)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        LLM2Comp.from_pretrained(folder)
    assert not marker.exists()
    # the folder's own claim removed, nothing runs either: transformers is told trust_remote_code=False
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "trust_remote_code": False}))
    model = LLM2Comp.from_pretrained(folder)  # transformers' own Llama class, not the folder's
    assert not marker.exists() and type(model.hf_model).__name__ == "LlamaForCausalLM"


def test_the_callers_word_allows_remote_code(tiny_dir, tmp_path):
    folder, marker = _hostile_folder(tiny_dir, tmp_path, bundled=True)
    model = LLM2Comp.from_pretrained(folder, trust_remote_code=True)
    assert marker.exists() and type(model.hf_model).__name__ == "EvilModel"


def test_saved_paths_stay_inside_the_folder(tiny_dir, tmp_path, monkeypatch):
    model = LLM2Comp.from_pretrained(tiny_dir)
    model.add_lora(r=2, alpha=4, dropout=0.0)
    folder = model.save(tmp_path / "saved")
    config = json.loads((folder / CONFIG_NAME).read_text())
    shutil.copytree(folder / "adapters", tmp_path / "outside")

    def write(**changes):
        (folder / CONFIG_NAME).write_text(json.dumps({**config, **changes}))

    write(adapters=["../outside/0"])
    with pytest.raises(ValueError, match="outside the model folder"):
        LLM2Comp.from_pretrained(folder)
    write(adapters=[str(tmp_path / "outside" / "0")])
    with pytest.raises(ValueError, match="outside the model folder"):
        LLM2Comp.from_pretrained(folder)
    # a relative backbone path is never read against the working directory
    monkeypatch.chdir(tiny_dir.parent)
    write(base_model=tiny_dir.name)
    with pytest.raises(ValueError, match="base_model="):
        LLM2Comp.from_pretrained(folder)
    write(base_model="../" + tiny_dir.name)
    with pytest.raises(ValueError, match="relative path outside the model folder"):
        LLM2Comp.from_pretrained(folder)
    # ... unless the caller names the backbone
    reference = LLM2Comp.from_pretrained(tiny_dir)
    reference.add_lora(r=2, alpha=4, dropout=0.0)
    loaded = LLM2Comp.from_pretrained(folder, base_model=str(tiny_dir))
    assert loaded.config.base_model == str(tiny_dir)
    write()
    assert LLM2Comp.from_pretrained(folder).encode("a text").shape == loaded.encode("a text").shape


def test_a_fresh_local_backbone_is_recorded_by_its_absolute_path(tiny_dir, monkeypatch):
    monkeypatch.chdir(tiny_dir.parent)
    assert LLM2Comp.from_pretrained(tiny_dir.name).config.base_model == str(tiny_dir.resolve())


def test_unknown_keys_and_a_newer_version_warn(tiny_dir, tmp_path):
    folder = LLM2Comp.from_pretrained(tiny_dir).save(tmp_path / "saved")
    config = json.loads((folder / CONFIG_NAME).read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        LLM2Comp.from_pretrained(folder)  # a config of this version: no warning
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "future_field": 1, "llm2comp_version": "99.0"}))
    with pytest.warns(UserWarning) as caught:
        LLM2Comp.from_pretrained(folder)
    messages = " ".join(str(w.message) for w in caught)
    assert "future_field" in messages and "99.0" in messages


def test_decontamination_asked_for_and_impossible_is_an_error(tmp_path, monkeypatch, caplog):
    from llm2comp.data.decontamination import resolve_decontaminator

    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="LLM2COMP_DATA_DIR"):
        resolve_decontaminator("auto", "builtin:shared-pairs")
    with pytest.raises(DataError, match="does not exist"):
        resolve_decontaminator("auto", f"pairs.jsonl+builtin:nli-pairs:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="not a folder"):
        resolve_decontaminator(str(tmp_path / "missing"))
    # auto where no benchmark folder exists at all (none named, none beside the project): nothing to check against,
    # said at WARNING level; naming a folder that is not there is the error above
    monkeypatch.delenv("LLM2COMP_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="llm2comp.data.decontamination"):
        assert resolve_decontaminator("auto", "pairs.jsonl") is None
    assert any("nothing to check against" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert resolve_decontaminator("off", "pairs.jsonl") is None
