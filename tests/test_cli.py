"""The command line: subcommands, encode from file and stdin, clear errors."""

import subprocess
import sys

import numpy as np

from llm2comp.cli import main


def test_help_lists_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for command in ("encode", "train", "evaluate", "export", "quickstart"):
        assert command in out


def test_train_flags_contract(capsys):
    try:
        main(["train", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for flag in ("--stage", "--objective", "--max-steps", "--batch-size", "--max-length", "--save-steps", "--resume",
                 "--model", "--data", "--output", "--config"):
        assert flag in out


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
    assert main(["encode", "-", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_train_attention_flag_reaches_the_config(monkeypatch, tmp_path):
    import llm2comp.training.run as run

    seen = []
    monkeypatch.setattr(run, "train", lambda cfg: seen.append(cfg) or tmp_path)
    for flag, expected in ((["--attention", "causal"], False), (["--attention", "bidirectional"], True), ([], None)):
        assert main(["train", "--model", "m", "--data", "d", "--output", str(tmp_path), *flag]) == 0
        assert seen[-1].bidirectional is expected
