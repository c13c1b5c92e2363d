"""Inference backends: int8 really runs int8 kernels, stays close to fp32, and changes nothing of what is embedded."""

import numpy as np
import torch
import pytest

from llm2comp import LLM2Comp
from llm2comp.backends import quantized_linear_layers, use_backend
from llm2comp.testing import SAMPLE_TEXT


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_int8_is_close_to_fp32_and_runs_int8_kernels(tiny_dir, bidirectional):
    fp32 = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, bidirectional=bidirectional)
    fp32.add_lora(r=4, alpha=8)
    int8 = use_backend(LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, bidirectional=bidirectional), "torch-int8")
    assert quantized_linear_layers(fp32) == 0
    linears = sum(1 for name, _ in fp32.body.named_modules() if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")))
    assert quantized_linear_layers(int8) == linears > 0  # every linear layer of the body but down_proj; LM head left alone
    assert all(type(m) is torch.nn.Linear for name, m in int8.body.named_modules() if name.endswith("down_proj"))
    reference = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, bidirectional=bidirectional).encode(SAMPLE_TEXT)
    quantized = int8.encode(SAMPLE_TEXT)
    assert quantized.shape == reference.shape
    assert _cosine(quantized, reference).min() > 0.98  # tiny random model: a stated tolerance, measured ~0.999
    assert int8.backend == "torch-int8" and not np.allclose(quantized, reference)  # it did change the arithmetic


def test_backend_at_load_and_what_an_int8_model_refuses(tiny_dir, tmp_path):
    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, backend="torch-int8")
    assert model.backend == "torch-int8" and quantized_linear_layers(model) > 0
    with pytest.raises(ValueError, match="does not train"):
        model.add_lora()
    with pytest.raises(ValueError, match="unknown backend"):
        LLM2Comp.from_pretrained(tiny_dir, backend="tensorrt")
    with pytest.raises(ValueError, match="already runs"):
        use_backend(model, "torch")
    # a trained model: the adapter is merged before quantising, the truncation/normalizer path is unchanged
    trained = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3)
    trained.add_lora(r=4, alpha=8)
    trained.fit_normalizer(SAMPLE_TEXT)
    trained.save(tmp_path / "m")
    fp32 = LLM2Comp.from_pretrained(tmp_path / "m").encode(SAMPLE_TEXT, truncate_dim=8)
    int8 = LLM2Comp.from_pretrained(tmp_path / "m", backend="torch-int8")
    assert int8.peft_model is None and int8.normalizer is not None
    assert _cosine(int8.encode(SAMPLE_TEXT, truncate_dim=8), fp32).min() > 0.95


onnx_installed = pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
                                    reason="onnx / onnxruntime / onnxscript not installed")


@onnx_installed
@pytest.mark.parametrize("bidirectional", [False, True])
def test_onnx_embeds_like_torch_and_int8_runs_int8_products(tiny_dir, tmp_path, monkeypatch, bidirectional):
    from llm2comp.onnx_backend import onnx_int8_products

    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path / "cache"))
    trained = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, bidirectional=bidirectional)
    trained.add_lora(r=4, alpha=8)
    from llm2comp.testing import perturb_lora

    perturb_lora(trained)
    trained.fit_normalizer(SAMPLE_TEXT)
    trained.save(tmp_path / "m")
    reference = LLM2Comp.from_pretrained(tmp_path / "m").encode(SAMPLE_TEXT)
    onnx = LLM2Comp.from_pretrained(tmp_path / "m", backend="onnx")
    assert onnx.backend == "onnx" and onnx.peft_model is None and onnx.normalizer is not None
    assert len(onnx.body.layers) == 0  # the torch layers are freed: the graph runs them
    assert onnx.body_runner.session.get_session_options().enable_cpu_mem_arena is False  # no arena that only grows
    embeddings = onnx.encode(SAMPLE_TEXT)
    np.testing.assert_allclose(embeddings, reference, atol=2e-5, rtol=1e-4)  # the same network, another runtime
    np.testing.assert_allclose(onnx.encode(SAMPLE_TEXT[:2], truncate_dim=8), LLM2Comp.from_pretrained(tmp_path / "m").encode(SAMPLE_TEXT[:2], truncate_dim=8), atol=2e-5, rtol=1e-4)
    assert onnx_int8_products(onnx)[0] == 0
    # the export is cached: a second load does not export again
    cached = sorted(p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("model.onnx"))
    LLM2Comp.from_pretrained(tmp_path / "m", backend="onnx")
    assert sorted(p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("model.onnx")) == cached
    int8 = LLM2Comp.from_pretrained(tmp_path / "m", backend="onnx-int8")
    quantized, kept = onnx_int8_products(int8)
    layers = trained.hf_model.config.num_hidden_layers
    assert quantized == 6 * layers and kept >= layers  # q, k, v, o, gate, up per layer int8; down_proj (and attention) fp32
    close = int8.encode(SAMPLE_TEXT)
    cosine = _cosine(close, reference)  # tiny random model, 1 or 2 threads: measured mean ~0.98, minimum 0.93-0.97
    assert cosine.mean() > 0.95 and cosine.min() > 0.85 and not np.allclose(close, reference)


def test_int8_saturation_is_read_off_the_cpu_flags():
    from llm2comp.onnx_backend import int8_saturates

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert int8_saturates(avx2)  # VPMADDUBSW: pairwise sums saturate at int16
    assert not int8_saturates(avx2.replace("avx2", "avx2 avx512f avx512_vnni"))
    assert not int8_saturates(avx2.replace("avx2", "avx2 avx_vnni"))
    assert int8_saturates("")  # flags unknown: the safe side


@onnx_installed
def test_onnx_int8_weights_take_7_bits_where_8_would_saturate(tiny_dir, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    import llm2comp.onnx_backend as onnx_backend

    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path / "cache"))
    reference = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3).encode(SAMPLE_TEXT)
    largest = {}
    for saturates in (False, True):
        monkeypatch.setattr(onnx_backend, "int8_saturates", lambda: saturates)
        model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, backend="onnx-int8")
        assert model.body_runner.path.parent.name == ("int8-7bit-weights" if saturates else "int8")
        weights = [numpy_helper.to_array(i) for i in onnx.load(str(model.body_runner.path)).graph.initializer
                   if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("_quantized")]
        assert len(weights) == 6 * model.hf_model.config.num_hidden_layers
        largest[saturates] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
        assert _cosine(model.encode(SAMPLE_TEXT), reference).mean() > 0.95
    assert largest[False] == 127 and largest[True] <= 64  # per channel, symmetric: the largest weight takes the top level


def test_onnx_backend_without_onnx_installed_says_what_to_install(tiny_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'llm2comp\[onnx\]'"):
        LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, backend="onnx")


@onnx_installed
def test_evaluate_loads_the_main_model_on_a_backend(tiny_dir, tmp_path, monkeypatch):
    from llm2comp.evaluation.specs import model_spec

    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path / "cache"))
    spec = model_spec(str(tiny_dir), backend="onnx")
    assert spec.label.endswith("(onnx)")
    encoder, model = spec.load()
    assert model.backend == "onnx" and encoder is not None
    with pytest.raises(ValueError, match="backend applies to models loaded by name"):
        model_spec(LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3), backend="onnx")


def _mapped(folder) -> bool:
    return str(folder) in open("/proc/self/maps").read()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
@pytest.mark.parametrize("backend", ["torch-int8", pytest.param("onnx-int8", marks=onnx_installed)])
def test_a_converted_model_lets_go_of_its_weight_file(tmp_path, monkeypatch, backend):
    from llm2comp.testing import make_tiny_model_dir

    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path / "cache"))
    folder = make_tiny_model_dir(tmp_path / "mapped")  # a folder of its own: no other model maps this file
    model = LLM2Comp.from_pretrained(folder, num_memory_tokens=3)
    model.add_lora(r=4, alpha=8)  # merged on conversion: merging writes into the mapped weights
    assert _mapped(folder)  # loaded weights are views of the memory-mapped safetensors file
    reference = model.encode(SAMPLE_TEXT)
    use_backend(model, backend)  # most weights are replaced; the embedding table alone would keep the whole file
    assert not _mapped(folder)
    assert _cosine(model.encode(SAMPLE_TEXT), reference).min() > 0.98


def test_conversion_hands_freed_memory_back(tiny_dir, monkeypatch):
    import platform

    import llm2comp.backends as backends

    calls = []
    real = backends.return_freed_memory
    monkeypatch.setattr(backends, "return_freed_memory", lambda: calls.append(1) or real())
    use_backend(LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3), "torch-int8")
    assert calls == [1]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert real() is True  # glibc's malloc_trim was found and called


def _export_in_a_process(tiny_dir, folder, barrier, results):
    """One exporter: the model's ONNX export (torch.onnx.export replaced by a writer of a file naming this process;
    both processes reach the export, and then the publication, at the same moment), then what it returned, read at
    once and again after the other process is done."""
    import os

    import llm2comp.onnx_backend as onnx_backend

    def fake_export(body, args, path, **kwargs):
        with open(path, "w") as handle:
            handle.write(f"onnx of process {os.getpid()}")

    torch.onnx.export = fake_export
    onnx_backend._forget_rewriter_matches = lambda: barrier.wait(timeout=60)  # the step right before publishing
    try:
        model = LLM2Comp.from_pretrained(tiny_dir)
        path = onnx_backend.export_onnx(model, folder)
        first = path.read_text()
        barrier.wait(timeout=60)  # the other one has published (or dropped) its export too
        results.put(("ok", first, path.read_text()))
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put(("error", repr(error), ""))
        barrier.abort()


def test_concurrent_exporters_of_one_model_end_with_one_valid_export(tiny_dir, tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    folder = tmp_path / "cache" / "fp32"
    for attempt in range(3):  # several races, one of them into a folder left half-done by a crash
        if attempt == 2:
            import shutil

            shutil.rmtree(folder)
            folder.mkdir()
            (folder / "model.onnx.data").write_text("left by a crash")
        barrier, results = context.Barrier(2), context.Queue()
        workers = [context.Process(target=_export_in_a_process, args=(tiny_dir, folder, barrier, results)) for _ in range(2)]
        for worker in workers:
            worker.start()
        answers = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
        assert [kind for kind, _, _ in answers] == ["ok", "ok"], answers
        final = (folder / "model.onnx").read_text()
        # what each process got stays what it got (no one replaced it), and it is the one export that stands
        assert all(first == later == final for _, first, later in answers), answers
        assert final.startswith("onnx of process") and not (folder / "model.onnx.data").exists()
        assert [p.name for p in folder.parent.iterdir()] == ["fp32"]  # no staging or stale folder left behind
