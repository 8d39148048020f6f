"""Runtimes: registry, reasons for what cannot run here, and output parity on one real model."""
from __future__ import annotations

import ast
import json
import os
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import runtimes
from runtimes import onnxruntime_runtime, openvino_runtime, tensorrt_runtime, torch_runtime
from runtimes.base import Session, as_batch

ROOT = Path(__file__).resolve().parents[1]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()


class TinyNet(torch.nn.Module):
    """Conv-BN-ReLU classifier small enough to export in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The model, its dynamo ONNX export (dynamic batch), its OpenVINO IR, and a real batch."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():  # non-trivial BN statistics so folding them is actually exercised
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    out = tmp_path_factory.mktemp("tiny")
    onnx_path = out / "tiny.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(onnx_path), dynamo=True,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    xml_path = None
    if importlib.util.find_spec("openvino") is not None:   # GPU images lack it (.ci/gpu_check.py);
        import openvino as ov                               # the CUDA tests need no IR

        xml_path = out / "tiny.xml"
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    batch = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    return {"model": model, "onnx": onnx_path, "xml": xml_path, "batch": batch}


def test_importing_runtimes_loads_no_backend():
    code = ("import sys, runtimes; "
            "print([m for m in ('torch', 'onnxruntime', 'openvino', 'tensorrt') "
            "if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_runtimes_import_neither_pipeline_nor_exporters():
    for path in (ROOT / "runtimes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"pipeline", "exporters"}, f"{path.name}: {name}"


def test_describe_lists_every_registered_runtime():
    rows = {row["name"]: row for row in runtimes.describe()}
    assert list(rows) == list(runtimes.RUNTIMES)
    assert {"torch", "onnxruntime", "openvino", "tensorrt"} <= set(rows)
    for name in ("torch", "onnxruntime", "openvino"):
        assert rows[name]["unavailable"] is None, rows[name]
        assert "cpu" in rows[name]["devices"]
        assert rows[name]["version"] == importlib.metadata.version(name)
    assert rows["openvino"]["formats"] == ["openvino", "onnx"]
    if not HAS_TENSORRT:
        assert rows["tensorrt"]["version"] is None
        assert rows["tensorrt"]["devices"] == []
        assert "pip install 'edgeship[tensorrt]'" in rows["tensorrt"]["unavailable"]


def test_get_and_for_format():
    assert runtimes.get("openvino") is openvino_runtime
    with pytest.raises(KeyError, match="known runtimes: " + ", ".join(runtimes.RUNTIMES)):
        runtimes.get("tflite")
    assert [m.NAME for m in runtimes.for_format("onnx")] == ["onnxruntime", "openvino"]
    assert [m.NAME for m in runtimes.for_format("tensorrt")] == ["tensorrt"]


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_tensorrt_missing_is_a_reason_not_a_crash(tiny, tmp_path):
    reason = tensorrt_runtime.unavailable()
    assert reason.startswith("tensorrt is not installed: pip install 'edgeship[tensorrt]'")
    assert tensorrt_runtime.devices() == []
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(RuntimeError, match="tensorrt is not installed"):
        tensorrt_runtime.load(engine)


def test_tensorrt_refuses_cpu_devices():
    assert "use 'cuda'" in tensorrt_runtime.unavailable("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")
def test_cuda_devices_have_reasons_without_a_gpu():
    for device in ("cuda", "cuda:0", "cuda-graph"):
        assert torch_runtime.unavailable(device).startswith("no CUDA device"), device
    assert torch_runtime.devices() == ["cpu"]
    with pytest.raises(RuntimeError, match="cannot load on torch device 'cuda'"):
        torch_runtime.load(TinyNet(), "cuda")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "pip install onnxruntime-gpu" in onnxruntime_runtime.unavailable("cuda")
        assert onnxruntime_runtime.devices() == ["cpu"]


def test_unknown_devices_are_reasons():
    assert "no device 'tpu'" in torch_runtime.unavailable("tpu")
    assert "no device 'npu'" in onnxruntime_runtime.unavailable("npu")
    assert "available: cpu" in openvino_runtime.unavailable("myriad")


def test_as_batch_rejects_a_missing_batch_axis():
    with pytest.raises(ValueError, match=r"expected NCHW.*batch\[None\]"):
        as_batch(np.zeros((3, 32, 32), np.float32))
    assert as_batch(np.zeros((1, 3, 4, 4), np.float64)).dtype == np.float32


def test_parity_torch_onnxruntime_openvino(tiny):
    batch = tiny["batch"]
    reference = torch_runtime.load(tiny["model"], "cpu", threads=1).run(batch)
    assert reference.shape == (3, 10) and reference.dtype == np.float32
    sessions = {
        "onnxruntime": onnxruntime_runtime.load(tiny["onnx"], "cpu", threads=1),
        "openvino IR": openvino_runtime.load(tiny["xml"], "cpu", 1, inference_precision="f32"),
        "openvino ONNX": openvino_runtime.load(tiny["onnx"], "cpu", 1, inference_precision="f32"),
    }
    for name, session in sessions.items():
        assert isinstance(session, Session)
        for rows in (batch, batch[:1]):  # dynamic batch: 3 then 1
            out = session.run(rows)
            session.sync()
            assert out.shape == (len(rows), 10), name
            delta = float(np.abs(out - reference[: len(rows)]).max())
            assert delta < 1e-4, f"{name}: max |delta| {delta}"


def test_openvino_output_is_not_overwritten_by_the_next_run(tiny):
    session = openvino_runtime.load(tiny["xml"], "cpu", 1, inference_precision="f32")
    first = session.run(tiny["batch"][:1])
    kept = first.copy()
    session.run(tiny["batch"][1:2])
    np.testing.assert_array_equal(first, kept)


def test_openvino_session_keeps_its_shared_input_alive(tiny):
    # The request holds a bare pointer to the shared input; a converted temporary (float64 in,
    # float32 fed) must outlive infer() and the call, or OpenVINO reads freed memory.
    session = openvino_runtime.load(tiny["xml"], "cpu", 1, inference_precision="f32")
    expected = session.run(tiny["batch"][:1])
    np.testing.assert_array_equal(session.run(tiny["batch"][:1].astype(np.float64)), expected)
    fed = session._input
    assert fed.dtype == np.float32 and sys.getrefcount(fed) > 2  # the session's own reference


def test_openvino_compiles_for_latency_and_reports_precision(tiny):
    session = openvino_runtime.load(tiny["xml"], "cpu", threads=1)
    props = session.properties
    assert props["PERFORMANCE_HINT"] == "LATENCY"
    assert props["NUM_STREAMS"] == "1"
    assert props["INFERENCE_NUM_THREADS"] == "1"
    assert props["INFERENCE_PRECISION_HINT"] in {"f32", "bf16", "f16"}
    pinned = openvino_runtime.load(tiny["xml"], "cpu", 1, inference_precision="fp32")
    assert pinned.properties["INFERENCE_PRECISION_HINT"] == "f32"
    with pytest.raises(ValueError, match="inference_precision 'int4'"):
        openvino_runtime.load(tiny["xml"], "cpu", 1, inference_precision="int4")


def test_openvino_says_why_when_its_cpu_plugin_cannot_start(tiny):
    # ONEDNN_MAX_CPU_ISA limits PyTorch's oneDNN (to imitate an AVX2 machine); OpenVINO's own
    # oneDNN may refuse to start under it. Listed as available, it must then also load a model;
    # refused, loading is one line with exit code 8, quantize scores in ONNX Runtime alone and
    # export skips the IR bundles.
    code = ("import json\n"
            "from runtimes import openvino_runtime as o\n"
            "from runtimes.base import CannotLoad\n"
            "from exporters.openvino_export import export_onnx_to_openvino\n"
            "from exporters.spec import ExportUnavailable\n"
            "from pipeline.stages.quantize import _scorers\n"
            "reason = o.unavailable('cpu')\n"
            "try:\n"
            f"    o.load({str(tiny['xml'])!r}, 'cpu', 1)\n"
            "    loads = 'loads'\n"
            "except CannotLoad as exc:\n"
            "    loads = f'fails {exc.exit_code} {exc}'\n"
            "exports = None\n"
            "if reason:  # the exporter must refuse before it reads its arguments\n"
            "    try:\n"
            f"        export_onnx_to_openvino({str(tiny['onnx'])!r}, {str(tiny['onnx'].parent / 'ir')!r}, None)\n"
            "    except ExportUnavailable as exc:\n"
            "        exports = str(exc)\n"
            "print(json.dumps([loads, reason, _scorers(), exports]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert done.returncode == 0, done.stderr[-2000:]
    loads, reason, (names, skipped), not_exported = json.loads(done.stdout.strip().splitlines()[-1])
    if loads == "loads":
        assert reason is None and names == ["onnxruntime", "openvino"] and skipped == {}
    else:
        assert reason.startswith("OpenVINO's CPU plugin does not start while ONEDNN_MAX_CPU_ISA=AVX2 "
                                 "is set (") and reason.endswith("); unset it for OpenVINO rows")
        assert loads == f"fails 8 cannot load on openvino device 'cpu': {reason}"
        assert names == ["onnxruntime"] and skipped == {"openvino": reason}
        assert not_exported == reason     # the export stage skips the IR bundles with this reason
        assert (f"quantize: the accuracy budget is held in onnxruntime only; openvino cannot run "
                f"here ({reason})") in done.stderr


def test_onnxruntime_session_options(tiny):
    import onnxruntime as ort

    import onnx

    # A ModelProto with its weights loaded (the export keeps them in an external .data file).
    session = onnxruntime_runtime.load(onnx.load(str(tiny["onnx"])), "cpu", threads=2)
    options = session._session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session.providers == ["CPUExecutionProvider"]


def test_load_errors_name_the_file_and_the_fix(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        onnxruntime_runtime.load(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="onnx.ModelProto"):
        onnxruntime_runtime.load(42)
    lone_xml = tmp_path / "lone.xml"
    lone_xml.write_text(tiny["xml"].read_text())
    with pytest.raises(FileNotFoundError, match=r"lone\.bin"):
        openvino_runtime.load(lone_xml)
    with pytest.raises(TypeError, match="in-memory torch.nn.Module"):
        torch_runtime.load(str(tiny["onnx"]))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="torch.cuda.is_available() is False: no CUDA device")
def test_torch_cuda_eager_and_graph_match_cpu(tiny):
    from runtimes.harness import measure

    reference = torch_runtime.load(tiny["model"], "cpu").run(tiny["batch"])
    eager = torch_runtime.load(tiny["model"], "cuda")
    graph = torch_runtime.load(tiny["model"], "cuda-graph")
    for session in (eager, graph):
        for _ in range(2):  # the graph session captures on the first call, replays after
            out = session.run(tiny["batch"])
            assert float(np.abs(out - reference).max()) < 1e-3
    assert graph.run(tiny["batch"][:1]).shape == (1, 10)  # new shape: captured again
    stats = measure(graph, tiny["batch"][:1], warmup=3, min_iterations=20, min_seconds=0.1,
                    cuda_events=True)
    assert stats.timer == "cuda_events" and stats.iterations >= 20 and stats.p50_ms > 0


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TENSORRT),
                    reason=tensorrt_runtime.unavailable() or "no CUDA device")
def test_tensorrt_engine_matches_onnxruntime(tiny, tmp_path):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(tiny["onnx"])), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 3, 32, 32), (3, 3, 32, 32), (4, 3, 32, 32))
    config.add_optimization_profile(profile)
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(bytes(builder.build_serialized_network(network, config)))

    session = tensorrt_runtime.load(engine, "cuda")
    reference = onnxruntime_runtime.load(tiny["onnx"]).run(tiny["batch"])
    out = session.run(tiny["batch"])
    assert float(np.abs(out - reference).max()) < 1e-2  # TF32 may be used for fp32 layers
    assert session.run(tiny["batch"][:1]).shape == (1, 10)
    with pytest.raises(ValueError, match="optimisation profile allows"):
        session.run(np.zeros((8, 3, 32, 32), np.float32))
