"""Decontamination: no text of an evaluation split reaches the training data, and the run says what it dropped."""

import json
from pathlib import Path

import pytest

from llm2comp.data.corpus import DataError, read_jsonl
from llm2comp.data.decontamination import Decontaminator, evaluation_texts, normalise, resolve_decontaminator
from llm2comp.data.builtin_pairs import shared_pairs
from llm2comp.data.pair_sources import load_pairs
from llm2comp.data.pairs import build_contrastive_dataset, load_sentences
from llm2comp.testing import make_tiny_benchmark_dir
from llm2comp.training.config import TrainConfig


def _append(path: Path, rows: list[dict]) -> None:
    with path.open("a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)


def _contaminated_dir(root: Path) -> tuple[Path, dict]:
    """A tiny benchmark folder whose train splits hold evaluation text, as STS-B train holds STS13-15 pairs."""
    folder = make_tiny_benchmark_dir(root)
    sts13 = [{"sentence1": "A man is slicing a tomato.", "sentence2": "A man slices a tomato.", "score": 4.8},
             {"sentence1": "Two dogs run on the beach.", "sentence2": "A cat sleeps.", "score": 0.2}]
    (folder / "mteb/STS13").mkdir(parents=True)
    (folder / "mteb/STS13/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sts13))
    validation = {"sentence1": "The validation sentence.", "sentence2": "A validation line.", "score": 4.5}
    (folder / "mteb/STSBenchmark/validation.jsonl").write_text(json.dumps(validation) + "\n")
    stsb_test = read_jsonl(folder / "mteb/STSBenchmark/test.jsonl")[0]
    _append(folder / "mteb/STSBenchmark/train.jsonl", [
        # the same pair, case and space changed: a positive that must go
        {"sentence1": "a man is   SLICING a tomato. ", "sentence2": "A man slices a tomato.", "score": 4.6},
        # one side an evaluation sentence, the other clean: the pair goes too
        {"sentence1": "Two dogs run on the beach.", "sentence2": "Dogs are running on sand.", "score": 4.2},
        {"sentence1": stsb_test["sentence2"], "sentence2": "A clean paraphrase of it.", "score": 4.4},
        {"sentence1": "The validation sentence.", "sentence2": "A sentence for validation.", "score": 4.1},
        # a clean positive whose only low-scored partner is an evaluation sentence: kept, without that negative
        {"sentence1": "Clean sentence one.", "sentence2": "Clean sentence uno.", "score": 4.9},
        {"sentence1": "Clean sentence one.", "sentence2": "A cat sleeps.", "score": 0.1},
    ])
    banking_test = read_jsonl(folder / "mteb/Banking77Classification/test.jsonl")[0]
    _append(folder / "mteb/Banking77Classification/train.jsonl", [{"text": banking_test["text"].upper(), "label": banking_test["label"]}])
    return folder, {"stsb_test": stsb_test, "banking_test": banking_test}


def _all_sides(pairs):
    return [p[k] for p in pairs for k in ("query", "positive", "negative") if p.get(k)]


def test_evaluation_texts_cover_every_evaluation_split(tmp_path):
    folder, planted = _contaminated_dir(tmp_path / "bench")
    per_task = evaluation_texts(folder)
    assert normalise("A man is slicing a tomato.") in per_task["STS13"]
    assert normalise("The validation sentence.") in per_task["STSBenchmark"]  # validation: a model may be chosen on it
    assert normalise(planted["banking_test"]["text"]) in per_task["Banking77Classification"]
    # SciFact: test claims and the abstracts they are judged against (title + text), never train claims
    corpus = {r["_id"]: r for r in read_jsonl(folder / "mteb/SciFact/corpus.jsonl")}
    queries = {r["_id"]: r["text"] for r in read_jsonl(folder / "mteb/SciFact/queries.jsonl")}
    assert normalise(queries["3"]) in per_task["SciFact"] and normalise(queries["20"]) not in per_task["SciFact"]
    assert normalise(f"{corpus['d10']['title']} {corpus['d10']['text']}") in per_task["SciFact"]
    assert normalise(f"{corpus['d20']['title']} {corpus['d20']['text']}") not in per_task["SciFact"]
    # train splits are not evaluation text
    train_sentence = read_jsonl(folder / "mteb/STSBenchmark/train.jsonl")[0]["sentence1"]
    assert all(normalise(train_sentence) not in texts for texts in per_task.values())


def test_shared_pairs_hold_no_evaluation_text(tmp_path):
    folder, planted = _contaminated_dir(tmp_path / "bench")
    texts = set().union(*evaluation_texts(folder).values())
    dirty = shared_pairs(folder, seed=0)
    assert any(normalise(side) in texts for side in _all_sides(dirty))  # the planted contamination is there

    clean = Decontaminator.from_folder(folder)
    pairs = shared_pairs(folder, seed=0, clean=clean)
    assert pairs and not any(normalise(side) in texts for side in _all_sides(pairs))
    assert any(p["query"] in ("Clean sentence one.", "Clean sentence uno.") for p in pairs)  # a clean pair stays
    report = clean.report()
    # STS-B: the four planted rows + the row pairing a clean sentence with an evaluation one; Banking77: one text
    assert report["per_source"]["stsb"]["dropped"] == 5
    assert report["per_source"]["banking77"]["dropped"] == 1
    assert report["per_source"]["scifact"]["dropped"] == 1  # train qrel 10 -> d10: an abstract a test claim is judged against
    assert report["evaluation_texts"] == len(texts)


def test_the_training_stage_decontaminates_by_default_and_records_it(tmp_path, monkeypatch):
    folder, _ = _contaminated_dir(tmp_path / "bench")
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(folder))
    texts = set().union(*evaluation_texts(folder).values())
    cfg = TrainConfig.from_dict(dict(stage="supervised", data="builtin:shared-pairs", batch_size=2))
    dataset = build_contrastive_dataset(cfg.stage, cfg.data_settings())
    assert not any(normalise(side) in texts for side in _all_sides(dataset.pairs))
    assert dataset.decontamination["folder"] == str(folder.resolve())
    assert dataset.decontamination["per_source"]["stsb"]["dropped"] == 5
    off = build_contrastive_dataset("supervised", TrainConfig.from_dict(dict(stage="supervised", data="builtin:shared-pairs", batch_size=2, decontaminate="off")).data_settings())
    assert off.decontamination is None and any(normalise(side) in texts for side in _all_sides(off.pairs))


def test_user_pairs_and_sentences_against_a_named_folder(tmp_path, monkeypatch):
    folder, _ = _contaminated_dir(tmp_path / "bench")
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(tmp_path / "elsewhere-missing"))
    user = tmp_path / "pairs.jsonl"
    user.write_text("".join(json.dumps(r) + "\n" for r in [
        {"query": "my own query", "positive": "my own answer"},
        {"query": "my second query", "positive": "a man slices a tomato."},
        {"query": "my third query", "positive": "an answer", "negative": "The validation sentence."},
    ]))
    clean = resolve_decontaminator(str(folder), str(user))
    pairs = load_pairs(str(user), clean=clean)
    assert [p["query"] for p in pairs] == ["my own query"]
    assert clean.report()["per_source"]["default"] == {"checked": 3, "dropped": 2}
    # auto with no benchmark folder anywhere: nothing to check against, the data is used as given
    monkeypatch.delenv("LLM2COMP_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert resolve_decontaminator("auto", str(user)) is None
    with pytest.raises(DataError, match="not a folder"):
        resolve_decontaminator(str(tmp_path / "missing"), str(user))
    # every pair contaminated: a clear error, not an empty run
    only_dirty = tmp_path / "dirty.jsonl"
    only_dirty.write_text(json.dumps({"query": "A cat sleeps.", "positive": "x"}) + "\n")
    with pytest.raises(DataError, match="decontaminate: off"):
        load_pairs(str(only_dirty), clean=Decontaminator.from_folder(folder))
    # sentences (SimCSE) too
    sentences = tmp_path / "s.txt"
    sentences.write_text("A CAT SLEEPS.\na sentence of my own\n")
    assert load_sentences(str(sentences), clean=Decontaminator.from_folder(folder)) == ["a sentence of my own"]


def _real_data_dir():
    from llm2comp.data.benchmark_dir import resolve_data_dir

    try:
        return resolve_data_dir()
    except FileNotFoundError:
        return None


@pytest.mark.skipif(_real_data_dir() is None or not (_real_data_dir() / "mteb/STS13").is_dir(), reason="benchmark data directory absent")
def test_no_test_split_sentence_survives_in_the_real_shared_pairs():
    root = _real_data_dir()
    test_texts = set()
    for task in ("STSBenchmark", "STS13", "STS14", "STS15", "SICK-R"):
        for row in read_jsonl(root / "mteb" / task / "test.jsonl"):
            test_texts.update((normalise(row["sentence1"]), normalise(row["sentence2"])))
    test_texts.update(normalise(r["text"]) for r in read_jsonl(root / "mteb/Banking77Classification/test.jsonl"))
    clean = Decontaminator.from_folder(root)
    pairs = load_pairs(f"builtin:shared-pairs:{root}", seed=0, clean=clean)
    assert not any(normalise(side) in test_texts for side in _all_sides(pairs))
    report = clean.report()["per_source"]
    # STS-B train shares a sentence with an evaluation split in most of its 5,749 rows (README of the data)
    assert report["stsb"]["checked"] == 5749 and 3500 < report["stsb"]["dropped"] < 4500
    assert sum(p["source"] == "stsb" for p in pairs) > 300
