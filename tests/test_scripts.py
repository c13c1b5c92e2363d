"""The driver scripts' report phases on fabricated run folders (no model): the tables they write into the results pages."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).parent.parent / "scripts"
DEV_SUITE = ("STSBenchmark", "STS13", "STS14", "STS15", "SICK-R")


def _evaluation(folder: Path, label: str, gold: dict, noise: float, seed: int, banking: float = 0.8) -> dict:
    """An `llm2comp evaluate --predictions` folder whose cosines are the gold scores plus noise, and whose ten
    Banking77 experiments label the first `banking` share of 300 test items right."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    scores = {}
    for task, values in gold.items():
        cosines = values + rng.normal(scale=noise, size=len(values))
        scores[task] = float(spearmanr(values, cosines)[0])
        (folder / "predictions/gold").mkdir(parents=True, exist_ok=True)
        (folder / "predictions/gold" / f"{task}.json").write_text(json.dumps({"task": task, "split": "test", "scores": values.tolist()}))
        (folder / "predictions" / label).mkdir(parents=True, exist_ok=True)
        (folder / "predictions" / label / f"{task}_predictions.json").write_text(
            json.dumps({"mteb_model_meta": {"model_name": label}, "default": {"test": {"cosine_scores": cosines.tolist()}}}))
    labels = [f"intent{i % 7}" for i in range(300)]
    right = round(banking * len(labels))
    predicted = [labels[:right] + ["wrong"] * (len(labels) - right)] * 10
    (folder / "predictions/gold/Banking77Classification.json").write_text(
        json.dumps({"task": "Banking77Classification", "split": "test", "kind": "classification", "labels": labels}))
    (folder / "predictions" / label / "Banking77Classification_predictions.json").write_text(
        json.dumps({"mteb_model_meta": {"model_name": label}, "default": {"test": predicted}}))
    scores["Banking77Classification"] = right / len(labels)
    (folder / "results.json").write_text(json.dumps(scores))
    (folder / "results_full.json").write_text(json.dumps({"models": [label], "scores": {label: scores}}))
    return scores


def _interval_cell(cell: str) -> tuple[float, float, float]:
    """'+1.23 [+0.45, +2.01]' -> (1.23, 0.45, 2.01)"""
    delta, interval = cell.split(" ", 1)
    low, high = (float(x) for x in interval.strip("[]").split(","))
    return float(delta), low, high


def test_compare_report_writes_the_table_with_the_paired_interval(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    gold = {task: rng.uniform(0, 5, size=300) for task in DEV_SUITE}
    runs, evals = tmp_path / "runs", tmp_path / "runs/eval"
    none = _evaluation(evals / "none-sup", "none-sup", gold, noise=1.5, seed=1, banking=0.7)
    kl = _evaluation(evals / "kl-sup", "kl-sup", gold, noise=0.5, seed=2, banking=0.8)  # clearly better
    for name, values in (("none", {"STSBenchmark": 0.5, "SICK-R": 0.55}), ("kl", {"STSBenchmark": 0.4, "SICK-R": 0.45})):
        (evals / name).mkdir(parents=True)
        (evals / name / "results.json").write_text(json.dumps(values))
    (runs / "kl").mkdir()
    (runs / "kl/llm2comp_config.json").write_text("{}")
    (runs / "kl/train_time.json").write_text(json.dumps({"seconds": 600}))
    (runs / "kl/loss.jsonl").write_text("\n".join(json.dumps({"step": i, "loss": 2.0}) for i in range(30)))
    results = tmp_path / "docs/results/pretext.md"
    results.parent.mkdir(parents=True)
    results.write_text("# R\n\nbefore\n<!-- comparison:begin -->\nold\n<!-- comparison:end -->\nafter\n")
    subprocess.run([sys.executable, SCRIPTS / "reproduce_pretext.py", "compare-report", "--runs", runs,
                    "--objectives", "kl,nll", "--results", results], check=True, capture_output=True, text=True, timeout=300)
    text = results.read_text()
    assert text.startswith("# R\n\nbefore\n<!-- comparison:begin -->") and text.endswith("<!-- comparison:end -->\nafter\n")
    assert "old" not in text and "| NLL" not in text  # a stage 1 not trained yet gets no row
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
            if line.startswith("| none") or line.startswith("| KL")}
    none_avg, kl_avg = (100 * np.mean([s[t] for t in DEV_SUITE]) for s in (none, kl))
    assert rows["none (supervised only)"][8] == f"**{none_avg:.2f}**" and rows["none (supervised only)"][9] == "–"
    assert rows["none (supervised only)"][10:] == ["70.00", "–"]
    assert rows["KL"][:3] == ["10 min", "2.000", "40.00 / 45.00"]
    assert rows["KL"][8] == f"**{kl_avg:.2f}**"
    delta, low, high = _interval_cell(rows["KL"][9])
    assert delta == pytest.approx(kl_avg - none_avg, abs=0.01)
    assert 0 < low < delta < high  # a clearly better model: the interval excludes 0
    assert rows["KL"][10] == "80.00"
    delta, low, high = _interval_cell(rows["KL"][11])
    assert delta == pytest.approx(10.0) and 0 < low < 10 < high < 20  # 30 of 300 items: +10 points
    assert (tmp_path / "docs/figures/pretext-comparison.png").stat().st_size > 1000
    stored = json.loads((tmp_path / "docs/comparison.json").read_text())
    assert set(stored) == {"none", "kl"} and stored["kl"]["vs_none"]["low"] > 0 and stored["kl"]["banking_vs_none"]["low"] > 0


def test_contamination_split_scores_the_overlapping_pairs_apart(tmp_path):
    from llm2comp.testing import make_tiny_benchmark_dir

    data = make_tiny_benchmark_dir(tmp_path / "data")
    train = [json.loads(line) for line in (data / "mteb/STSBenchmark/train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (data / "mteb/STSBenchmark/test.jsonl").read_text().splitlines()]
    # five train pairs reappear in the test split (case changed): the overlapping subset
    test += [{"sentence1": r["sentence1"].upper(), "sentence2": r["sentence2"], "score": float(r["score"])} for r in train[:5]]
    (data / "mteb/STSBenchmark/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    gold = np.array([r["score"] for r in test])
    run = tmp_path / "eval"
    _evaluation(run, "model", {"STSBenchmark": gold}, noise=0.5, seed=0)
    out = subprocess.run([sys.executable, SCRIPTS / "contamination_split.py", str(run), "--data-dir", str(data)],
                         check=True, capture_output=True, text=True).stdout
    row = next(line for line in out.splitlines() if "STSBenchmark" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "5" and cells[4] == f"{len(test) - 5:,}"


def test_compression_downstream_runs_every_arm_once_and_resumes(tmp_path):
    """The chain of docs/results/pretext.md 3.7, with a stand-in CLI: each arm trained and evaluated once, the seed's comparison
    written; run again, it trains and evaluates nothing (every finished step is skipped)."""
    import os
    import subprocess

    log = tmp_path / "calls.log"
    fake = tmp_path / "fake"
    fake.write_text(f"""#!/bin/bash
echo "$@" >> {log}
out=""; prev=""
for a in "$@"; do [ "$prev" = --output ] && out=$a; prev=$a; done
case "$1" in
  train) mkdir -p "$out" && touch "$out/llm2comp_config.json";;
  evaluate) mkdir -p "$out" && touch "$out/results.json";;
  compare) echo "table";;
  -c) mkdir -p "${{@: -1}}" && touch "${{@: -1}}/llm2comp_config.json";;
esac
""")
    fake.chmod(0o755)
    env = {**os.environ, "LLM2COMP": str(fake), "PYTHON": str(fake)}
    runs = tmp_path / "runs"
    for _ in range(2):
        subprocess.run(["bash", str(SCRIPTS / "compression_downstream.sh"), str(runs), "1 2"], env=env, check=True,
                       cwd=SCRIPTS.parent)
    calls = log.read_text().splitlines()
    trains = [c for c in calls if c.startswith("train")]
    assert len(trains) == 4 and sum("--model smollm2-135m " in c for c in trains) == 2
    assert sum(c.startswith("evaluate") for c in calls) == 6 and sum(c.startswith("-c") for c in calls) == 1
    assert all("--resume" in c for c in trains)
    assert (runs / "compare-s1.txt").read_text() == "table\n" and (runs / "compare-s2.txt").is_file()


def test_matryoshka_sizes_scores_like_evaluate_and_cuts_like_encode(tiny_dir, tmp_path):
    import importlib.util

    from scipy.stats import spearmanr

    from llm2comp import LLM2Comp
    from llm2comp.evaluation import evaluate_model
    from llm2comp.testing import make_tiny_benchmark_dir

    data = make_tiny_benchmark_dir(tmp_path / "data")
    spec = importlib.util.spec_from_file_location("matryoshka_sizes", SCRIPTS / "matryoshka_sizes.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=4, max_length=64)
    scores = script.size_scores(model, data, [8])
    full = str(model.get_sentence_embedding_dimension())
    assert list(scores) == [full, "8"] and set(scores[full]) == {"STSBenchmark", "SICK-R", "STS avg"}
    reference = evaluate_model(model, ["STSBenchmark", "SICK-R"], data_dir=data, print_table=False, show_progress=False)
    assert scores[full]["STSBenchmark"] == pytest.approx(100 * reference["STSBenchmark"], abs=1e-3)
    assert scores[full]["SICK-R"] == pytest.approx(100 * reference["SICK-R"], abs=1e-3)
    rows = [json.loads(line) for line in (data / "mteb/SICK-R/test.jsonl").read_text().splitlines()]
    a = model.encode([r["sentence1"] for r in rows], truncate_dim=8, normalize_embeddings=True)
    b = model.encode([r["sentence2"] for r in rows], truncate_dim=8, normalize_embeddings=True)
    expected = 100 * spearmanr((a * b).sum(1), [r["score"] for r in rows])[0]
    assert scores["8"]["SICK-R"] == pytest.approx(expected, abs=1e-3)
    assert "| 8 |" in script.markdown({"tiny": scores})
    # a rotating normalizer: "not rotated" cuts equal those of the plain normalizer fitted on the same texts
    fit = [r[k] for r in rows for k in ("sentence1", "sentence2")][:40]
    model.fit_normalizer(fit)
    plain = script.size_scores(model, data, [8])
    model.fit_normalizer(fit, pca=True)
    task_rows, row_of, rotated = script.sts_embeddings(model, data)
    unrotated = script.score_sizes(task_rows, row_of, rotated @ model.normalizer.rotation.double().numpy().T, [8])
    assert unrotated["8"]["STS avg"] == pytest.approx(plain["8"]["STS avg"], abs=1e-3)
    assert script.score_sizes(task_rows, row_of, rotated, [8])[full]["STS avg"] == pytest.approx(plain[full]["STS avg"], abs=1e-3)


def _sample_efficiency():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sample_efficiency", SCRIPTS / "sample_efficiency.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


FAKE_CLI = '''import json, sys
from pathlib import Path
args = sys.argv[1:]
with open(sys.argv[0] + ".log", "a") as log:
    log.write(" ".join(args) + "\\n")
value = lambda flag: args[args.index(flag) + 1]
out = Path(value("--output"))
if args[0] == "train":
    for step in range(25, int(value("--max-steps")) + 1, 25):
        checkpoint = out / "checkpoints" / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / "checkpoint-complete.json").write_text("{}")
    (out / "llm2comp_config.json").write_text("{}")
else:
    out.mkdir(parents=True)
    steps = int(value("--model").rsplit("-", 1)[1])
    bonus = 0.01 if "compressor" in value("--model") else 0.0
    tasks = value("--tasks").split(",")
    (out / "results.json").write_text(json.dumps({t: 0.5 + steps / 1000 + bonus for t in tasks}))
'''


def test_sample_efficiency_plans_trains_scores_and_resumes(tmp_path, monkeypatch):
    script = _sample_efficiency()
    # the first seed to the largest budget, the others to the budgets of two_seed_max steps and fewer
    assert script.plan([100, 25, 50, 200], [42, 7], 100) == [(42, 200, [25, 50, 100, 200]), (7, 100, [25, 50, 100])]
    assert script.plan([200], [42, 7], 100) == [(42, 200, [200])]

    cli = tmp_path / "fake_llm2comp.py"
    cli.write_text(FAKE_CLI)
    launcher = tmp_path / "llm2comp"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} {cli} \"$@\"\n")
    launcher.chmod(0o755)
    compared = []
    monkeypatch.setattr(script, "compare", lambda reference, folder: compared.append((reference.name, folder.name)))
    runs, scores, figure = tmp_path / "runs", tmp_path / "scores", tmp_path / "curve.png"
    argv = ["run", "--runs", str(runs), "--scores", str(scores), "--figure", str(figure), "--llm2comp", str(launcher), "--seeds", "42,7",
            "--budgets", "25,50", "--two-seed-max", "25", "--arms", "backbone,compressor"]
    script.main(argv)
    commands = (tmp_path / "fake_llm2comp.py.log").read_text().splitlines()
    trains = [c for c in commands if c.startswith("train")]
    assert len(trains) == 4 and sum("--max-steps 50" in c for c in trains) == 2  # seed 42 to 50, seed 7 to 25
    assert any("--model smollm2-135m-compressor --seed 7 --max-steps 25" in c for c in trains)
    assert sum(c.startswith("evaluate") for c in commands) == 6  # 2 arms x (2 budgets at seed 42 + 1 at seed 7)
    assert sorted(compared) == [("backbone-s42-25", "compressor-s42-25"), ("backbone-s42-50", "compressor-s42-50"),
                                ("backbone-s7-25", "compressor-s7-25")]
    rows = script.collect(scores)
    assert [(r["budget"], r["arm"], r["seed"]) for r in rows][:3] == [(25, "backbone", 7), (25, "backbone", 42),
                                                                     (25, "compressor", 7)]
    assert rows[-1]["sts"] == pytest.approx(100 * (0.5 + 0.05 + 0.01))
    written = (scores / "sample-efficiency.md").read_text()
    assert "| 50 | compressor | 42 | 56.00 | 56.00 |" in written and "| 50 | 42 | " in written  # both tables
    assert figure.stat().st_size > 1000
    script.main(argv)  # everything is on disk: nothing is trained or scored again
    assert (tmp_path / "fake_llm2comp.py.log").read_text().splitlines() == commands
    longer = [*argv[:argv.index("--budgets") + 1], "25,50,100", *argv[argv.index("--budgets") + 2:]]
    script.main(longer)  # a larger budget: seed 42's runs are extended to 100 steps, only the new budget scored
    new = (tmp_path / "fake_llm2comp.py.log").read_text().splitlines()[len(commands):]
    trained = [c for c in new if c.startswith("train")]
    assert len(trained) == 2 and all("--seed 42 --max-steps 100" in c and c.endswith("--resume") for c in trained)
    assert [c.split("--model ")[1].split(" ")[0].rsplit("/", 3)[-3:] for c in new if c.startswith("evaluate")] == [
        ["backbone-s42", "checkpoints", "checkpoint-100"], ["compressor-s42", "checkpoints", "checkpoint-100"]]
    commands = (tmp_path / "fake_llm2comp.py.log").read_text().splitlines()
    shutil.rmtree(runs)  # a new session: the checkpoints are gone, the committed scores are not
    script.main(argv)
    assert (tmp_path / "fake_llm2comp.py.log").read_text().splitlines() == commands
    with pytest.raises(SystemExit):
        script.main(["run", "--arms", "compressor"])  # no reference arm


def test_sample_efficiency_pivot_puts_each_arm_against_the_backbone_by_budget_and_seed():
    script = _sample_efficiency()
    rows = [{"arm": "backbone", "seed": 7, "budget": 25, "sts": 71.0, "banking77": 73.85},
            {"arm": "compressor", "seed": 7, "budget": 25, "sts": 70.4, "banking77": 75.38, "vs_backbone": (-0.64, -1.18, -0.08)},
            {"arm": "mntp", "seed": 7, "budget": 25, "sts": 71.5, "banking77": 73.89, "vs_backbone": (0.5, 0.37, 0.64)},
            {"arm": "backbone", "seed": 42, "budget": 25, "sts": 70.8, "banking77": 73.73},
            {"arm": "compressor", "seed": 42, "budget": 25, "sts": 70.1, "banking77": 75.09, "vs_backbone": (-0.73, -1.27, -0.18)},
            {"arm": "backbone", "seed": 7, "budget": 50, "sts": 73.9, "banking77": 75.2}]
    lines = script.pivot(rows).splitlines()
    assert lines[0] == "| steps | seed | compressor - backbone | mntp - backbone | Banking77: backbone / compressor / mntp |"
    assert lines[2:] == ["| 25 | 7 | -0.64 [-1.18, -0.08] | +0.50 [+0.37, +0.64] | 73.85 / 75.38 / 73.89 |",
                         "| 25 | 42 | -0.73 [-1.27, -0.18] | - | 73.73 / 75.09 / - |",
                         "| 50 | 7 | - | - | 75.20 / - / - |"]
    assert script.verdict(rows) == [
        "- compressor: +1.0 or more with the interval above zero at 2 seeds at no budget (budgets <= 100 with 2 seeds scored: 25)",
        "- mntp: +1.0 or more with the interval above zero at 2 seeds at no budget (budgets <= 100 with 2 seeds scored: none)"]
    paying = [dict(r, vs_backbone=(1.2, 0.3, 2.1)) if r["arm"] == "compressor" else r for r in rows]
    assert script.verdict(paying)[0].startswith("- compressor: +1.0 or more with the interval above zero at 2 seeds at 25 steps")
    paying[1]["vs_backbone"] = (1.2, -0.1, 2.5)  # one seed's interval reaches zero: it does not pay
    assert "at no budget" in script.verdict(paying)[0]


def test_sample_efficiency_arms_differ_by_their_start_only(tmp_path):
    # every arm is read through memory tokens from the recipe's phrase: MNTP's stage 1 saves mean pooling and, being a
    # saved model, would not get the recipe's memory init in the supervised stage
    from llm2comp.training.config import TrainConfig

    script = _sample_efficiency()
    recipe = TrainConfig.from_yaml(script.RECIPE)
    assert recipe.pooling == "memory" and recipe.memory_init == ' means in one word:"'
    commands = []
    script._run = commands.append
    assert script.start_of("mntp", tmp_path, "llm2comp", {"mntp": 30}) == str(tmp_path / "stage1-mntp")
    assert commands[0][-2:] == ["--memory-init", recipe.memory_init] and "--max-steps 30" in " ".join(commands[0])
    assert script.start_of("backbone", tmp_path, "llm2comp") == "smollm2-135m" and len(commands) == 1
    # the long-text compressor: stage 1 from its config, then its probe at its own length and at 64 tokens, kept
    scores = tmp_path / "scores"
    (tmp_path / "stage1-kl-long").mkdir()
    (tmp_path / "stage1-kl-long" / "probe.jsonl").write_text('{"step": 50}\n')
    assert script.start_of("compressor-long", tmp_path, "llm2comp", scores=scores) == str(tmp_path / "stage1-kl-long")
    train, *probes = commands[1:]
    assert str(script.LONGTEXT) in train and "probe" not in train
    assert [c[c.index("--text-tokens") + 1] for c in probes] == ["256", "64"]
    assert (scores / "stage1-kl-long" / "probe.jsonl").read_text() == '{"step": 50}\n'


def test_sample_efficiency_pretext_only_row_reads_each_start_raw_and_normalized(tmp_path, monkeypatch):
    script = _sample_efficiency()
    commands = []

    def fake_run(command):
        commands.append(command)
        out = Path(command[command.index("--output") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if command[1] == "evaluate":  # a normalized read scores 0.1 higher
            value = 0.6 if out.name.endswith("-normalized") else 0.5
            (out / "results.json").write_text(json.dumps({t: value for t in script.TASKS}))
        else:
            (out / "llm2comp_config.json").write_text("{}")

    monkeypatch.setattr(script, "_run", fake_run)
    monkeypatch.setattr(script, "save_untrained", lambda folder: fake_run(["x", "save", "--output", str(folder)]))
    runs, scores = tmp_path / "runs", tmp_path / "scores"
    argv = ["pretext", "--runs", str(runs), "--scores", str(scores), "--starts", "untrained,compressor,mntp"]
    script.main(argv)
    evaluated = [c[c.index("--model") + 1] for c in commands if c[1] == "evaluate"]
    # MNTP's stage 1 is not trained here: skipped, not trained by this step
    assert evaluated == [str(runs / "untrained"), str(runs / "untrained-normalized"), "smollm2-135m-compressor",
                         str(runs / "compressor-normalized")]
    fits = [c for c in commands if c[1] == "fit-normalizer"]
    assert [c[2] for c in fits] == [str(runs / "untrained"), "smollm2-135m-compressor"]
    assert all(c[c.index("--data") + 1] == "builtin:nli-pairs" for c in fits)
    table = (scores / "pretext-only" / "pretext-only.md").read_text()
    assert "| compressor | 50.00 | 50.00 | 60.00 | 60.00 |" in table and "mntp" not in table
    script.main(argv)  # all on disk: nothing again
    assert len([c for c in commands if c[1] == "evaluate"]) == 4


def test_sample_efficiency_slims_the_predictions_it_keeps_and_the_comparison_is_unchanged(tmp_path):
    from llm2comp.evaluation import compare_evaluations

    script = _sample_efficiency()
    rng = np.random.default_rng(0)
    gold = {task: rng.uniform(0, 5, size=300) for task in DEV_SUITE}
    _evaluation(tmp_path / "backbone", "backbone", gold, noise=1.5, seed=1)
    _evaluation(tmp_path / "full", "arm", gold, noise=0.5, seed=2)
    shutil.copytree(tmp_path / "full", tmp_path / "slim")
    prediction = tmp_path / "slim/predictions/arm/STS13_predictions.json"
    data = json.loads(prediction.read_text())
    data["default"]["test"]["euclidean_distances"] = [1.0] * 300  # what mteb also writes, and the comparison never reads
    prediction.write_text(json.dumps(data))

    script.slim_predictions(tmp_path / "slim")
    assert list(json.loads(prediction.read_text())["default"]["test"]) == ["cosine_scores"]
    assert not list((tmp_path / "slim/predictions").rglob("Banking77Classification*"))  # its score stays in results.json
    full = {r.task: r for r in compare_evaluations(tmp_path / "backbone", tmp_path / "full")}
    slim = {r.task: r for r in compare_evaluations(tmp_path / "backbone", tmp_path / "slim")}
    assert set(slim) == set(full) - {"Banking77Classification"}
    for task, row in slim.items():
        assert row.delta == pytest.approx(full[task].delta, abs=1e-4) and row.low == pytest.approx(full[task].low, abs=1e-3)
    # the script compares with a tolerance for the rounding: a score 5e-5 off what the predictions give passes there,
    # and is refused as stale by the default check
    full_report = json.loads((tmp_path / "slim/results_full.json").read_text())
    full_report["scores"]["arm"]["STS13"] += 5e-5
    (tmp_path / "slim/results_full.json").write_text(json.dumps(full_report))
    with pytest.raises(ValueError, match="stale"):
        compare_evaluations(tmp_path / "backbone", tmp_path / "slim")
    script.compare(tmp_path / "backbone", tmp_path / "slim")
    rows = json.loads((tmp_path / "slim/against-backbone.json").read_text())
    assert rows[-1]["task"] == "STS average"
