"""`pip install .` and a built wheel: the package with every resource (the export's module, the recipes, the shipped
trained models), the `llm2comp` console script, the extras `serve` and `onnx`; installed on its own (pip's --target,
not a virtual environment: that is the manual check described in the README), it runs `llm2comp encode` on two
lines. Built offline: `pip wheel --no-deps --no-build-isolation --no-index` with this environment's setuptools."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                                reason="building the wheel offline needs setuptools in this environment")


def _pip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of this tree (building in the tree itself would leave build/ and *.egg-info behind)."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"), ".", cwd=source)
    if built.returncode != 0 and ("bdist_wheel" in built.stderr or "No module named" in built.stderr):
        pytest.skip(f"cannot build a wheel offline here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("llm2comp-*.whl")
    return wheel


def test_the_wheel_holds_the_package_its_resources_the_script_and_the_extras(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "src" / "llm2comp"
    expected = {f"llm2comp/{p.relative_to(package).as_posix()}" for p in package.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    missing = sorted(expected - names)
    assert not missing, missing  # every module and every resource file
    assert "llm2comp/resources/modeling_llm2comp.py" in names
    assert {"llm2comp/resources/smollm2-135m-sup/adapters/0/adapter_model.safetensors",
            "llm2comp/resources/recipes/smollm2-135m-default.yaml"} <= names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    archive = zipfile.ZipFile(wheel)
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "[console_scripts]" in entry_points and "llm2comp = llm2comp.cli:main" in entry_points
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    for extra in ("serve", "onnx"):
        assert f"Provides-Extra: {extra}" in metadata
    assert 'Requires-Dist: fastapi>=0.110; extra == "serve"' in metadata
    assert 'Requires-Dist: onnxruntime>=1.20; extra == "onnx"' in metadata


def test_the_installed_wheel_runs_llm2comp_encode(wheel, tiny_dir, tmp_path):
    target = tmp_path / "site"
    installed = _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    assert installed.returncode == 0, installed.stderr[-3000:]
    script = target / "bin" / "llm2comp"
    assert script.is_file()
    (tmp_path / "two.txt").write_text("The weather is lovely today.\nIt is sunny outside.\n")
    env = dict(os.environ, PYTHONPATH=str(target), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run([str(script), "encode", str(tmp_path / "two.txt"), "--model", str(tiny_dir), "--output",
                          str(tmp_path / "two.npy"), "--device", "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert np.load(tmp_path / "two.npy").shape == (2, 32)
    # the package that ran is the installed one, and it finds its resources there
    check = subprocess.run([sys.executable, "-c", "import llm2comp, llm2comp.export as e; print(llm2comp.__file__); "
                            "print(len(e.module_source()))"], env=env, capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stderr[-3000:]
    location, size = check.stdout.split()
    assert Path(location).is_relative_to(target) and int(size) > 1000
