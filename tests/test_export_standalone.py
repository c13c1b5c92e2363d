"""The exported folder is self-contained: in a process where `import llm2comp` fails, sentence-transformers alone loads
it (`SentenceTransformer(folder, trust_remote_code=True)`) and embeds as `LLM2Comp.encode` does, prompts included;
and the functions its module copies from llm2comp still equal llm2comp's."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from llm2comp import LLM2Comp
from llm2comp.data.instructions import SHARED_INSTRUCTIONS, apply_prompt, format_query, trained_prompts
from llm2comp.export import MODULE_FILE, export_sentence_transformers, module_source
from llm2comp.testing import SAMPLE_TEXT, make_tiny_model_dir, perturb_lora

TEXTS = SAMPLE_TEXT + ["", "Ünïcödé — text ✓ {braces}", "word " * 40]
QUERIES = ["What does the quick fox do?", "weather today", "word " * 40]

# imports of llm2comp fail in the subprocess, whatever sys.path holds (an editable install, the source tree)
BLOCKER = """
import sys

class NoLLM2Comp:
    def find_spec(self, name, path=None, target=None):
        if name == "llm2comp" or name.startswith("llm2comp."):
            raise ImportError("llm2comp is blocked in this process")
        return None

sys.meta_path.insert(0, NoLLM2Comp())
"""

SCRIPT = BLOCKER + """
import json
import numpy as np
try:
    import llm2comp  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("llm2comp was importable")
from sentence_transformers import SentenceTransformer

job = json.loads(sys.argv[1])
out, info = {}, {}
for name, folder in job["folders"].items():
    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu", local_files_only=True)
    out[f"{name}/plain"] = st.encode(job["texts"], batch_size=3)
    out[f"{name}/normalized"] = st.encode(job["texts"], normalize_embeddings=True)
    out[f"{name}/query"] = st.encode_query(job["queries"])
    out[f"{name}/document"] = st.encode_document(job["texts"])
    out[f"{name}/truncated"] = st.encode(job["texts"], truncate_dim=8)
    out[f"{name}/single"] = st.encode(job["texts"][1])
    for prompt_name in st.prompts:
        out[f"{name}/prompt_name={prompt_name}"] = st.encode(job["queries"], prompt_name=prompt_name)
    resaved = job["resave"] + "/" + name
    st.save(resaved)
    out[f"{name}/resaved"] = SentenceTransformer(resaved, trust_remote_code=True, device="cpu").encode(job["texts"])
    info[name] = {"prompts": st.prompts, "default_prompt_name": st.default_prompt_name,
                  "module": type(st[0]).__module__, "max_seq_length": st.max_seq_length}
info["llm2comp_modules"] = sorted(m for m in sys.modules if m == "llm2comp" or m.startswith("llm2comp."))
np.savez(job["out"], **out)
with open(job["out"] + ".json", "w") as handle:
    json.dump(info, handle)
"""

PAIRS = [{"instruction": SHARED_INSTRUCTIONS["stsb"], "source": "stsb"}] * 3 + [
    {"instruction": SHARED_INSTRUCTIONS["scifact"], "source": "scifact"}] * 2


def _model(base, pooling="memory", bidirectional=None, pca=False, seed=0, max_length=32):
    """A 'trained' tiny model: a perturbed LoRA adapter (merged by the export), perturbed memory, a fitted normalizer."""
    model = LLM2Comp.from_pretrained(base, num_memory_tokens=4, max_length=max_length, pooling=pooling, bidirectional=bidirectional,
                                     device="cpu")
    model.add_lora(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj", "down_proj"))
    perturb_lora(model, seed)
    model.fit_normalizer(SAMPLE_TEXT + [t.upper() for t in SAMPLE_TEXT], source="test", pca=pca)
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Three models (bidirectional memory pooling with PCA normalizer and trained prompts; causal memory pooling with
    query/passage prompts; PromptEOL with a default prompt), saved and exported; our embeddings of each."""
    root = tmp_path_factory.mktemp("standalone")
    base = make_tiny_model_dir(root / "base", "llama", seed=5)
    models = {
        "trained": _model(base, pca=True),
        "causal": _model(base, bidirectional=False, seed=1),
        "prompteol": _model(base, pooling="prompteol", seed=2, max_length=64),
    }
    models["trained"].prompts = trained_prompts(PAIRS)
    models["causal"].prompts = {"query": "query: ", "passage": "passage: "}
    models["prompteol"].prompts = {"sts": "Same meaning: {text}."}
    models["prompteol"].default_prompt_name = "sts"
    folders, expected = {}, {}
    for name, model in models.items():
        model.save(root / "run" / name)
        ours = LLM2Comp.from_pretrained(root / "run" / name, device="cpu")  # as trained and saved, adapter attached
        assert ours.prompts == model.prompts and ours.default_prompt_name == model.default_prompt_name
        expected[f"{name}/plain"] = ours.encode(TEXTS)
        expected[f"{name}/normalized"] = ours.encode(TEXTS, normalize_embeddings=True)
        expected[f"{name}/query"] = ours.encode_query(QUERIES)
        expected[f"{name}/document"] = ours.encode_document(TEXTS)
        expected[f"{name}/truncated"] = ours.encode(TEXTS, truncate_dim=8)
        expected[f"{name}/single"] = ours.encode(TEXTS[1])
        for prompt_name in ours.prompts:
            expected[f"{name}/prompt_name={prompt_name}"] = ours.encode(QUERIES, prompt_name=prompt_name)
        expected[f"{name}/resaved"] = expected[f"{name}/plain"]
        folders[name] = str(export_sentence_transformers(root / "run" / name, root / "exported" / name))
    job = {"folders": folders, "texts": TEXTS, "queries": QUERIES, "out": str(root / "st.npz"), "resave": str(root / "resaved")}
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(root / "hf-modules"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(job)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    got = dict(np.load(root / "st.npz"))
    info = json.loads((root / "st.npz.json").read_text())
    return {"models": models, "expected": expected, "got": got, "info": info, "folders": folders}


def _cosines(a, b):
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_sentence_transformers_alone_embeds_as_llm2comp(exports):
    assert exports["info"]["llm2comp_modules"] == []  # nothing of llm2comp was imported in that process
    assert set(exports["expected"]) <= set(exports["got"])  # (sentence-transformers adds empty "query", "document")
    for key, expected in exports["expected"].items():
        got = exports["got"][key]
        assert got.shape == expected.shape, key
        assert _cosines(got, expected).min() > 0.9999, key
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4, err_msg=key)


def test_the_prompts_travel_and_encode_query_uses_the_trained_format(exports):
    info, got = exports["info"], exports["got"]
    trained = info["trained"]
    instruction = SHARED_INSTRUCTIONS["stsb"]
    assert trained["prompts"]["query"] == f"{instruction}: {{text}}\n"
    assert trained["prompts"]["scifact"] == f"{SHARED_INSTRUCTIONS['scifact']}: {{text}}\n"
    assert trained["prompts"]["document"] == "" and trained["default_prompt_name"] is None
    assert trained["module"].startswith("transformers_modules.") and trained["max_seq_length"] == 32
    # sentence-transformers' encode_query is our encode of the queries exactly as the supervised stage formats them
    ours = LLM2Comp.from_pretrained(exports["folders"]["trained"], device="cpu")
    as_trained = ours.encode([format_query(q, instruction) for q in QUERIES])
    assert _cosines(got["trained/query"], as_trained).min() > 0.9999
    assert np.abs(got["trained/query"] - ours.encode(QUERIES)).max() > 1e-3  # the prompt matters
    # a model with only a passage prompt: sentence-transformers' encode_document uses it, as ours does
    assert info["causal"]["prompts"]["document"] == "passage: "
    assert _cosines(got["causal/document"], exports["models"]["causal"].encode(["passage: " + t for t in TEXTS])).min() > 0.9999
    # the default prompt applies to encode in both
    assert info["prompteol"]["default_prompt_name"] == "sts"
    config = json.loads(open(os.path.join(exports["folders"]["prompteol"], "config_sentence_transformers.json")).read())
    assert config["prompts"] == {"sts": "Same meaning: {text}.", "query": "", "document": ""} and "llm2comp" not in config["requirements"]


def test_the_module_imports_no_llm2comp_and_its_copies_equal_llm2comp(tmp_path, exports):
    source = module_source()
    # llm2comp appears once, in the opt-in backend path, inside a try block (transformers' import check skips those)
    assert source.count("from llm2comp") == 1 and "import llm2comp" not in source
    path = tmp_path / MODULE_FILE
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("exported_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for text, prompt in [("a {text} b", "Q: {text}\n"), ("plain", "query: "), ("x", None), ("y", "")]:
        assert module.apply_prompt(prompt, text) == apply_prompt(prompt, text)
    for name, model in exports["models"].items():
        config = {k: getattr(model.config, k) for k in ("pooling", "num_memory_tokens", "max_length", "prompteol_template")}
        texts = TEXTS + ["word " * 100]
        rows = module.token_ids(model.tokenizer, texts, config)
        assert rows == model.token_ids(texts), name
        features = module.collate(rows, model.tokenizer.pad_token_id, module.memory_slots(config))
        reference = model.collate(rows)
        assert features.keys() == reference.keys()
        for key in features:
            assert torch.equal(features[key], reference[key]), (name, key)
