"""The command line: subcommands, encode from file and stdin, clear errors."""

import subprocess
import sys

import numpy as np
import pytest

from llm2comp.cli import main


TRAIN_FLAGS = [
    (["--stage", "supervised"], "stage", "supervised"), (["--objective", "nll"], "objective", "nll"),
    (["--max-steps", "7"], "max_steps", 7), (["--batch-size", "3"], "batch_size", 3),
    (["--max-length", "99"], "max_length", 99), (["--save-steps", "5"], "save_steps", 5),
    (["--resume"], "resume", True), (["--min-chars", "50"], "min_chars", 50), (["--drop-long"], "truncate_long", False),
    (["--memory-init", "x"], "memory_init", "x"), (["--num-memory-tokens", "4"], "num_memory_tokens", 4),
    (["--learning-rate", "0.5"], "learning_rate", 0.5), (["--gradient-accumulation-steps", "2"], "gradient_accumulation_steps", 2),
    (["--seed", "3"], "seed", 3), (["--gradient-checkpointing"], "gradient_checkpointing", True),
    (["--max-samples", "9"], "max_samples", 9), (["--fit-normalizer", "10", "--stage", "simcse"], "fit_normalizer", 10),
    (["--memory-bridge", "linear"], "memory_bridge", "linear"), (["--memory-lr", "0.01"], "memory_lr", 0.01),
    (["--probe-steps", "25"], "probe_steps", 25), (["--contrast-weight", "0.5"], "contrast_weight", 0.5),
    (["--decontaminate", "off"], "decontaminate", "off"), (["--global-batch-size", "64"], "global_batch_size", 64),
    (["--matryoshka-dims", "64,128", "--stage", "supervised"], "matryoshka_dims", [64, 128]),
    (["--cosent-scale", "10", "--stage", "supervised"], "cosent_scale", 10.0),
]


def test_every_train_flag_reaches_the_config_and_overrides_yaml(monkeypatch, tmp_path, capsys):
    import llm2comp.training.run as run
    from llm2comp.training.config import TrainConfig

    seen = []
    monkeypatch.setattr(run, "train", lambda cfg: seen.append(cfg) or tmp_path)
    base = ["train", "--model", "m", "--data", "d", "--output", str(tmp_path)]
    assert main(base) == 0
    untouched = seen[-1]
    assert (untouched.truncate_long, untouched.min_chars) == (True, 0)  # ordinary text trains by default
    for flags, field, value in TRAIN_FLAGS:
        assert main(base + flags) == 0, flags
        assert getattr(seen[-1], field) == value != getattr(untouched, field), flags
    config = tmp_path / "c.yaml"
    config.write_text("max_steps: 11\nbatch_size: 2\n")
    assert main(base + ["--config", str(config), "--max-steps", "5"]) == 0
    assert (seen[-1].max_steps, seen[-1].batch_size) == (5, 2)
    try:  # the help states the real defaults, per stage where a stage's recipe differs
        main(["train", "--help"])
    except SystemExit:
        pass
    out = " ".join(capsys.readouterr().out.split())
    assert f"default: {TrainConfig().max_steps}" in out and "simcse: 128" in out


def test_probe_command_reports_and_writes_json(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path / "cache"))  # the ceiling's cache
    corpus = tmp_path / "corpus.txt"
    from llm2comp.testing import SAMPLE_TEXT

    corpus.write_text("\n\n".join(f"{a} {b}" for a in SAMPLE_TEXT for b in SAMPLE_TEXT))
    out = tmp_path / "probe.json"
    args = ["probe", str(tiny_dir), "--data", str(corpus), "--passages", "4", "--text-tokens", "12", "--holdout", "10",
            "--ceiling-passages", "2", "--ceiling-steps", "3", "--num-memory-tokens", "2", "--output", str(out)]
    assert main(args + ["--memory-bridge", "affine"]) == 0
    report = __import__("json").loads(out.read_text())
    assert report["passages"] == 4 and report["memory_tokens"] == 2 and set(report["loss"]) == {"own", "other", "none"}
    assert report["ceiling"]["passages"] == 2 and "compression gain" in capsys.readouterr().out


def test_encode_file_and_stdin(tiny_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("first line\n\nthird line\n")
    assert main(["encode", str(texts), "--model", str(tiny_dir), "--output", str(tmp_path / "a.npy")]) == 0
    a = np.load(tmp_path / "a.npy")
    assert a.shape[0] == 3 and a.dtype == np.float32
    result = subprocess.run([sys.executable, "-m", "llm2comp", "encode", "--model", str(tiny_dir), "--skip-empty",
                             "--output", str(tmp_path / "b.npy")], input="first line\n\nthird line\n", text=True,
                            capture_output=True)
    assert result.returncode == 0, result.stderr
    b = np.load(tmp_path / "b.npy")
    assert b.shape[0] == 2
    np.testing.assert_allclose(b, a[[0, 2]], atol=1e-5)


def test_bad_model_is_one_error_line(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a text\n")
    assert main(["encode", str(tmp_path / "in.txt"), "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_train_attention_flag_reaches_the_config(monkeypatch, tmp_path):
    import llm2comp.training.run as run

    seen = []
    monkeypatch.setattr(run, "train", lambda cfg: seen.append(cfg) or tmp_path)
    for flag, expected in ((["--attention", "causal"], False), (["--attention", "bidirectional"], True), ([], None)):
        assert main(["train", "--model", "m", "--data", "d", "--output", str(tmp_path), *flag]) == 0
        assert seen[-1].bidirectional is expected


def test_encode_checks_its_input_before_loading_the_model(tmp_path, capsys):
    # a model that cannot load: the input error must come first (so no model is loaded for a bad file)
    missing_model = str(tmp_path / "no-model")
    assert main(["encode", str(tmp_path / "nope.txt"), "--model", missing_model]) == 2
    assert "input file not found" in capsys.readouterr().err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("fine\nalso fine\ncaf\xe9\n".encode("latin-1"))
    assert main(["encode", str(bad), "--model", missing_model]) == 2
    assert f"{bad}:3: not UTF-8 text (byte 0xe9)" in capsys.readouterr().err
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"header\nPK\x03\x04\x00\x00")
    assert main(["encode", str(binary), "--model", missing_model]) == 2
    assert f"{binary}:2: a NUL byte: this looks like a binary file" in capsys.readouterr().err


def test_read_lines_keeps_rows_and_handles_newline_styles(tmp_path):
    from llm2comp.data.corpus import read_lines

    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffone\r\n\r\nthree\rfour\n".encode("utf-8"))
    assert read_lines(str(path)) == ["one", "", "three", "four"]


def test_unknown_model_fails_at_once_with_what_is_accepted(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    assert main(["encode", str(texts), "--model", "no-such-model-xyz"]) == 2  # HF_HUB_OFFLINE=1 (conftest)
    err = capsys.readouterr().err
    assert "smollm2-135m-sup" in err and "config.json" in err and "HF_HUB_OFFLINE" in err

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    assert main(["encode", str(texts), "--model", "org/no-such-model"]) == 2
    assert "Hugging Face Hub is unreachable (ConnectionError)" in capsys.readouterr().err


def test_evaluate_pooling_is_checked_by_the_parser(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["evaluate", "--pooling", "cls"])
    assert "invalid choice: 'cls'" in capsys.readouterr().err


def test_help_and_argument_errors_import_nothing_heavy():
    """`llm2comp --help` and a bad argument answer without importing torch, transformers or mteb (each takes
    seconds); the built-in names the CLI offers are the library's."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io\n"
            "from llm2comp.cli import main\n"
            "for argv in (['--help'], ['encode', '--bogus'], ['serve', '--help'], ['evaluate', '--help']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        main(argv)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'mteb', 'peft', 'sentence_transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_cli_offers_the_librarys_names():
    from llm2comp.backends import BACKENDS
    from llm2comp.names import POOLING_MODES
    from llm2comp.pooling import POOLINGS

    assert set(POOLING_MODES) <= set(POOLINGS) and BACKENDS == ("torch", "torch-int8", "onnx", "onnx-int8")
    assert set(POOLINGS) - set(POOLING_MODES) == set()  # no built-in pooling missing from the CLI


def test_compress_and_generate_are_commands_and_methods(capsys):
    from llm2comp import LLM2Comp
    from llm2comp import generation

    for verb, flag in (("compress", "--segment-tokens"), ("generate", "--memory")):
        with pytest.raises(SystemExit) as exit_:
            main([verb, "--help"])
        assert exit_.value.code == 0 and flag in capsys.readouterr().out
    assert (LLM2Comp.compress, LLM2Comp.generate, LLM2Comp.reconstruct) == (generation.compress, generation.generate, generation.reconstruct)
