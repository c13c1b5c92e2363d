"""`LLM2Comp.encode` as sentence-transformers users know it: prompts (prompt_name, prompt, default_prompt_name,
encode_query / encode_document), precision (quantize_embeddings), device, unknown arguments refused; the prompts a
supervised stage records; mteb picking the model's prompts."""

import json

import numpy as np
import pytest
import torch
from sentence_transformers import quantize_embeddings

from llm2comp import LLM2Comp
from llm2comp.data.instructions import apply_prompt, format_query, query_prompt, trained_prompts
from llm2comp.testing import SAMPLE_TEXT

QUERIES = ["What does the fox do?", "weather {today}", ""]


@pytest.fixture()
def model(tiny_dir):
    return LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, max_length=48, device="cpu")


# ---------------------------------------------------------------------------------------------- prompts
def test_prompts_are_saved_and_old_configs_load_without_them(model, tmp_path):
    assert model.prompts == {} and model.default_prompt_name is None
    model.prompts = {"query": "Find: {text}\n", "sts": "Same: "}
    model.default_prompt_name = "sts"
    model.prompts["document"] = "doc: "  # the dict is the config's: edits are kept, as on a SentenceTransformer
    model.save(tmp_path / "m")
    loaded = LLM2Comp.from_pretrained(tmp_path / "m", device="cpu")
    assert loaded.prompts == {"query": "Find: {text}\n", "sts": "Same: ", "document": "doc: "}
    assert loaded.default_prompt_name == "sts"
    np.testing.assert_allclose(loaded.encode(SAMPLE_TEXT[:3]), model.encode(SAMPLE_TEXT[:3]), atol=1e-5)

    config = json.loads((tmp_path / "m" / "llm2comp_config.json").read_text())
    del config["prompts"], config["default_prompt_name"]  # a folder saved before prompts existed
    (tmp_path / "m" / "llm2comp_config.json").write_text(json.dumps(config))
    old = LLM2Comp.from_pretrained(tmp_path / "m", device="cpu")
    assert old.prompts == {} and old.default_prompt_name is None

    with pytest.raises(ValueError, match="default_prompt_name 'nope'"):
        model.default_prompt_name = "nope"
    with pytest.raises(ValueError, match="str -> str"):
        model.prompts = {"query": 3}
    with pytest.raises(ValueError, match="default_prompt_name 'sts'"):
        model.prompts = {}  # the default prompt must stay among them
    model.default_prompt_name = None
    model.prompts = {}


def test_prompt_name_prompt_and_the_default_prompt(model):
    texts = SAMPLE_TEXT[:3]
    model.prompts = {"query": "Find: {text}\n", "prefix": "query: ", "sts": "Same: "}
    find = model.encode([f"Find: {t}\n" for t in texts])
    np.testing.assert_allclose(model.encode(texts, prompt_name="query"), find, atol=1e-6)  # a template: text in place
    np.testing.assert_allclose(model.encode(texts, prompt="Find: {text}\n"), find, atol=1e-6)
    np.testing.assert_allclose(model.encode(texts, prompt_name="prefix"), model.encode(["query: " + t for t in texts]), atol=1e-6)
    np.testing.assert_allclose(model.encode(texts, prompt_name="prefix", prompt="Find: {text}\n"), find, atol=1e-6)  # prompt wins
    with pytest.raises(ValueError, match="'nope' is not one of this model's prompts \\('query', 'prefix', 'sts'\\)"):
        model.encode(texts, prompt_name="nope")
    plain = model.encode(texts)
    model.default_prompt_name = "sts"
    np.testing.assert_allclose(model.encode(texts), model.encode(texts, prompt="Same: "), atol=1e-6)
    np.testing.assert_allclose(model.encode(texts, prompt=""), plain, atol=1e-6)  # an empty prompt: none, not the default
    assert np.abs(model.encode(texts) - plain).max() > 1e-4
    # braces in a text are text, also under a template
    assert apply_prompt("Q: {text}!", "a {text} b") == "Q: a {text} b!"


def test_encode_query_and_document_choose_as_sentence_transformers_does(model):
    texts = SAMPLE_TEXT[:3]
    model.prompts = {"query": "Find: {text}\n", "passage": "passage: ", "corpus": "corpus: ", "sts": "Same: "}
    model.default_prompt_name = "sts"
    np.testing.assert_allclose(model.encode_query(QUERIES), model.encode(QUERIES, prompt_name="query"), atol=1e-6)
    np.testing.assert_allclose(model.encode_query(QUERIES, prompt_name="sts"), model.encode(QUERIES, prompt="Same: "), atol=1e-6)
    # no "document": the first of passage, corpus
    np.testing.assert_allclose(model.encode_document(texts), model.encode(texts, prompt="passage: "), atol=1e-6)
    model.prompts["document"] = "doc: "
    np.testing.assert_allclose(model.encode_document(texts), model.encode(texts, prompt="doc: "), atol=1e-6)
    # without a query prompt, encode_query uses none (sentence-transformers' "query" is always there, empty unless set)
    model.prompts = {"sts": "Same: "}
    np.testing.assert_allclose(model.encode_query(QUERIES), model.encode(QUERIES, prompt=""), atol=1e-6)
    np.testing.assert_allclose(model.encode_document(texts), model.encode(texts, prompt=""), atol=1e-6)
    assert model.encode_query(QUERIES[0]).shape == (model.get_sentence_embedding_dimension(),)


# ---------------------------------------------------------------------------------------------- precision, device
@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precision_is_sentence_transformers_quantization(model, precision):
    texts = SAMPLE_TEXT + [t.upper() for t in SAMPLE_TEXT]
    full = model.encode(texts)
    got = model.encode(texts, precision=precision)
    expected = quantize_embeddings(full, precision=precision)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    calibration = model.encode(SAMPLE_TEXT[::-1] + ["calibration text"])
    with_calibration = model.encode(texts[:3], precision=precision, calibration_embeddings=calibration)
    np.testing.assert_array_equal(with_calibration, quantize_embeddings(full[:3], precision=precision, calibration_embeddings=calibration))
    tensor = model.encode(texts[:2], precision=precision, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.numpy().dtype == expected.dtype
    single = model.encode(texts[0], precision=precision, calibration_embeddings=calibration)
    np.testing.assert_array_equal(single, with_calibration[0])
    if precision.endswith("binary"):
        assert model.encode(texts, precision=precision, truncate_dim=16).shape == (len(texts), 2)


def test_precision_edge_cases(model):
    with pytest.raises(ValueError, match="precision must be one of"):
        model.encode(["a"], precision="float16")
    with pytest.raises(ValueError):  # int8 buckets from one embedding: sentence-transformers refuses, so do we
        model.encode("one text", precision="int8")
    ranges = np.stack([np.full(model.get_sentence_embedding_dimension(), -1.0), np.full(model.get_sentence_embedding_dimension(), 1.0)])
    np.testing.assert_array_equal(model.encode("one text", precision="uint8", ranges=ranges),
                                  quantize_embeddings(model.encode(["one text"]), precision="uint8", ranges=ranges)[0])
    assert model.encode([], precision="int8").shape == (0, model.get_sentence_embedding_dimension())


def test_device_is_honoured_and_checked(model):
    expected = model.encode(SAMPLE_TEXT[:3])
    np.testing.assert_allclose(model.encode(SAMPLE_TEXT[:3], device="cpu"), expected, atol=1e-6)
    np.testing.assert_allclose(model.encode(SAMPLE_TEXT[:3], device=torch.device("cpu")), expected, atol=1e-6)
    assert not model.__dict__.get("_replica_cache")  # its own device: the model itself ran, no copy was made
    np.testing.assert_allclose(model.encode(SAMPLE_TEXT[:3], device=["cpu", "cpu"]), expected, atol=1e-6)  # a list: devices
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        model.encode(["a"], device="gpu0")
    with pytest.raises(ValueError, match="not both"):
        model.encode(["a"], device="cpu", devices=["cpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:0' is not available"):
            model.encode(["a"], device="cuda:0")


def test_an_unknown_argument_is_a_type_error_not_ignored(model):
    with pytest.raises(TypeError, match="unexpected keyword argument 'normalise_embeddings'"):
        model.encode(["a"], normalise_embeddings=True)
    with pytest.raises(TypeError, match="arguments 'chunk_size', 'pool'"):
        model.encode(["a"], pool=None, chunk_size=4)
    with pytest.raises(ValueError, match="sentence embeddings only"):
        model.encode(["a"], output_value="token_embeddings")
    # what mteb passes along is accepted
    model.encode(["a"], task_metadata=None, hf_split="test", hf_subset="default", prompt_type=None)


# ---------------------------------------------------------------------------------------------- training's prompts
def test_trained_prompts_are_the_training_query_format():
    pairs = ([{"instruction": "Retrieve it", "source": "a"}] * 3 + [{"instruction": "Find it", "source": "b"}] * 2
             + [{"instruction": "Given a premise", "source": "nli"}, {"instruction": "Retrieve similar", "source": "nli"},
                {"instruction": "", "source": "bare"}])
    prompts = trained_prompts(pairs)
    assert prompts == {"a": "Retrieve it: {text}\n", "b": "Find it: {text}\n", "nli_1": "Given a premise: {text}\n",
                       "nli_2": "Retrieve similar: {text}\n", "query": "Retrieve it: {text}\n"}
    assert trained_prompts([{"instruction": "", "source": "a"}]) == {}
    for query in QUERIES:
        assert apply_prompt(query_prompt("Find it"), query) == format_query(query, "Find it")
    assert query_prompt("") == ""


def test_a_supervised_stage_records_its_query_format_and_encode_query_uses_it(tiny_dir, tmp_path):
    from llm2comp.training.config import TrainConfig
    from llm2comp.training.run import train

    data = tmp_path / "pairs.jsonl"
    rows = [{"query": a, "positive": b, "source": "src", "instruction": "Retrieve the next sentence"}
            for a, b in zip(SAMPLE_TEXT, SAMPLE_TEXT[1:] + SAMPLE_TEXT[:1])]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    values = dict(stage="supervised", model=str(tiny_dir), data=str(data), output=str(tmp_path / "sup"), max_steps=1,
                  batch_size=4, save_steps=1, max_length=64, num_memory_tokens=3, lora_r=4, lora_alpha=8, warmup_steps=0)
    output = train(TrainConfig.from_dict(values))
    loaded = LLM2Comp.from_pretrained(output, device="cpu")
    assert loaded.prompts == {"src": "Retrieve the next sentence: {text}\n", "query": "Retrieve the next sentence: {text}\n"}
    expected = loaded.encode([format_query(q, "Retrieve the next sentence") for q in QUERIES])
    np.testing.assert_allclose(loaded.encode_query(QUERIES), expected, atol=1e-6)
    # without instructions, a later stage trains bare queries: no prompts
    values.update(model=str(output), output=str(tmp_path / "bare"), query_instructions=False)
    assert LLM2Comp.from_pretrained(train(TrainConfig.from_dict(values)), device="cpu").prompts == {}


# ---------------------------------------------------------------------------------------------- mteb
def test_mteb_takes_the_model_prompts_directly_and_through_the_adapter(model):
    import mteb
    from mteb._create_dataloaders import _create_dataloader_from_texts
    from mteb.types import PromptType

    from llm2comp.evaluation import MTEBEncoder

    model.prompts = {"query": "Find: {text}\n", "STSBenchmark": "Same: ", "SciFact-document": "evidence: "}
    scifact, sts, banking = (mteb.get_task(n).metadata for n in ("SciFact", "STSBenchmark", "Banking77Classification"))
    adapter = MTEBEncoder(model)
    assert adapter.model_prompts == model.prompts  # AbsEncoder's own attribute: the model's prompts
    cases = [(scifact, PromptType.query, "Find: {text}\n"), (scifact, PromptType.document, "evidence: "),
             (sts, None, "Same: "), (banking, None, "")]
    for meta, side, prompt in cases:
        expected = model.encode(QUERIES, prompt=prompt)
        kwargs = dict(task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=side)
        direct = model.encode(_create_dataloader_from_texts(QUERIES, batch_size=2), **kwargs)
        through = adapter.encode(_create_dataloader_from_texts(QUERIES, batch_size=2), **kwargs)
        np.testing.assert_allclose(direct, expected, atol=1e-6, err_msg=f"{meta.name} {side}")
        np.testing.assert_allclose(through, expected, atol=1e-6, err_msg=f"{meta.name} {side}")
    # instructions given to the adapter win over the model's prompts, on the query side only
    adapter = MTEBEncoder(model, instructions={"SciFact": "Check the claim"})
    assert adapter.prompt_for(scifact, PromptType.query) == "Check the claim: {text}\n"
    assert adapter.prompt_for(scifact, PromptType.document) == "evidence: "
    assert adapter.mteb_model_meta.use_instructions
