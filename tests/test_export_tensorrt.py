"""ONNX → TensorRT: everything around the build that does not need TensorRT, plus a GPU build test.

The cache tests use a dummy byte file as the cached engine: they test the cache logic (lookup,
store, no rebuild on a hit), not an engine. Building and running real engines is the `gpu` test.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from calibration import hash_record
from calibration.preprocess import Preprocessing
from exporters import ExportError, ExportSpec, ExportUnavailable, export
from exporters.tensorrt_export import (
    INSTALL_HINT,
    cache_options,
    cached_engine,
    check_qdq_for_tensorrt,
    engine_cache_key,
    materialize_engine,
    trtexec_command,
    unavailable,
)

PRE = Preprocessing(64, (0.5,) * 3, (0.5,) * 3, labels=("a", "b"))
KEY_ARGS = dict(onnx_sha256="ab" * 32, trt_version="10.3.0", gpu_name="Orin", compute_capability=(8, 7),
                precision="fp16", options={"optimization_level": 3, "workspace_mb": 1024})
TRT_MISSING = importlib.util.find_spec("tensorrt") is None


@pytest.mark.skipif(not TRT_MISSING, reason="tensorrt is installed here; the absent path cannot be shown")
def test_reason_when_tensorrt_is_missing(tmp_path):
    reason = unavailable()
    assert reason.startswith("TensorRT is not installed: pip install 'edgeship[tensorrt]' on a machine with an "
                             "NVIDIA GPU, or use JetPack's TensorRT on a Jetson")
    assert reason.startswith(INSTALL_HINT) and "No module named 'tensorrt'" in reason
    src = tmp_path / "model.onnx"
    src.write_bytes(b"not read: the exporter stops before touching its input")
    with pytest.raises(ExportUnavailable) as err:
        export(src, "onnx", "tensorrt", tmp_path / "out", ExportSpec(PRE))
    assert err.value.reason == reason
    assert not (tmp_path / "out").exists()


def test_cache_key_is_stable_and_changes_with_every_field():
    base = engine_cache_key(**KEY_ARGS)
    assert base == engine_cache_key(**KEY_ARGS) and len(base) == 64
    assert base == engine_cache_key(**{**KEY_ARGS, "compute_capability": "8.7"})
    assert base == engine_cache_key(**{**KEY_ARGS, "options": {"workspace_mb": 1024, "optimization_level": 3}})
    changed = {
        "onnx_sha256": "cd" * 32, "trt_version": "10.7.0", "gpu_name": "NVIDIA H100",
        "compute_capability": (9, 0), "precision": "int8",
        "options": {"optimization_level": 5, "workspace_mb": 1024},
    }
    keys = {field: engine_cache_key(**{**KEY_ARGS, field: value}) for field, value in changed.items()}
    keys["workspace"] = engine_cache_key(**{**KEY_ARGS, "options": {"optimization_level": 3, "workspace_mb": 2048}})
    assert base not in keys.values() and len(set(keys.values())) == len(keys)


def test_cache_options_follow_the_spec():
    base = cache_options(ExportSpec(PRE))
    assert base == cache_options(ExportSpec(PRE, max_batch_size=64))  # unused unless the batch is dynamic
    assert base == cache_options(ExportSpec(PRE, use_trtexec=True))    # same engine either way
    for change in ({"optimization_level": 5}, {"workspace_mb": 4096}, {"dynamic_batch": True}, {"batch_size": 4}):
        assert cache_options(ExportSpec(PRE, **change)) != base, change
    assert cache_options(ExportSpec(PRE, dynamic_batch=True)) != cache_options(
        ExportSpec(PRE, dynamic_batch=True, max_batch_size=64))


def test_trtexec_command_per_precision(tmp_path):
    onnx, engine = tmp_path / "m.onnx", tmp_path / "m.engine"
    fp32 = trtexec_command(onnx, engine, ExportSpec(PRE, optimization_level=4, workspace_mb=2048))
    assert fp32[:3] == ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    assert "--builderOptimizationLevel=4" in fp32 and "--memPoolSize=workspace:2048M" in fp32
    assert "--stronglyTyped" in fp32 and "--noTF32" in fp32 and "--fp16" not in fp32
    fp16 = trtexec_command(onnx, engine, ExportSpec(PRE, precision="fp16"))
    assert "--fp16" in fp16 and "--stronglyTyped" not in fp16 and "--builderOptimizationLevel=3" in fp16
    int8 = trtexec_command(onnx, engine, ExportSpec(PRE, precision="int8"))
    # Q/DQ graphs carry their own precision: strongly typed, no --int8/--fp16 flags.
    assert "--stronglyTyped" in int8 and "--int8" not in int8 and "--fp16" not in int8 and "--noTF32" not in int8
    assert not any(a.startswith(("--timingCacheFile", "--minShapes")) for a in fp32)


def test_trtexec_command_timing_cache_and_dynamic_shapes(tmp_path):
    spec = ExportSpec(PRE, dynamic_batch=True, batch_size=4, max_batch_size=16, timing_cache=tmp_path / "t.cache")
    cmd = trtexec_command(tmp_path / "m.onnx", tmp_path / "m.engine", spec, input_name="images")
    assert f"--timingCacheFile={tmp_path / 't.cache'}" in cmd
    assert "--minShapes=images:1x3x64x64" in cmd and "--optShapes=images:4x3x64x64" in cmd
    assert "--maxShapes=images:16x3x64x64" in cmd


def test_cache_hit_returns_stored_engine_without_building(tmp_path):
    cache, key = tmp_path / "cache", "k" * 64
    cache.mkdir()
    (cache / f"{key}.engine").write_bytes(b"cached-engine-bytes")
    hash_record.write_record(cache / f"{key}.engine")

    def must_not_build(path):
        raise AssertionError("built although the cache holds the engine")

    staged = tmp_path / "model.engine"
    assert materialize_engine(staged, cache, key, must_not_build, info={}) is True
    assert staged.read_bytes() == b"cached-engine-bytes"


def test_cache_miss_builds_once_then_hits(tmp_path):
    cache, builds = tmp_path / "cache", []

    def build(path):
        builds.append(path)
        path.write_bytes(b"engine-v1")

    info = {"tensorrt": "10.3.0", "gpu": "Orin"}
    assert materialize_engine(tmp_path / "a.engine", cache, "k1", build, info) is False
    assert cached_engine(cache, "k1").read_bytes() == b"engine-v1"
    assert json.loads((cache / "k1.json").read_text()) == info
    assert materialize_engine(tmp_path / "b.engine", cache, "k1", build, info) is True
    assert (tmp_path / "b.engine").read_bytes() == b"engine-v1" and len(builds) == 1
    assert materialize_engine(tmp_path / "c.engine", cache, "k2", build, info) is False and len(builds) == 2
    assert sorted(p.name for p in cache.iterdir()) == [f"{k}.{ext}" for k in ("k1", "k2") for ext in
                                                       ("engine", "engine.sha256", "json", "json.sha256")]


def test_no_cache_dir_always_builds_and_empty_build_is_an_error(tmp_path):
    assert cached_engine(None, "k") is None
    with pytest.raises(ExportError, match="TensorRT build wrote no engine"):
        materialize_engine(tmp_path / "x.engine", None, "k", lambda p: p.write_bytes(b""), info={})


def _qdq_model(path, zero_point: np.ndarray):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="q0"),
         helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dq0")],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "scale"), numpy_helper.from_array(zero_point, "zp")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_qdq_check_accepts_symmetric_int8_only(tmp_path):
    check_qdq_for_tensorrt(_qdq_model(tmp_path / "s8.onnx", np.array(0, np.int8)))
    with pytest.raises(ExportError, match=r"u8\.onnx has Q/DQ nodes that TensorRT cannot build .*q0 \(uint8, zero "
                                          r"point \[128\]\).*symmetric int8 activations"):
        check_qdq_for_tensorrt(_qdq_model(tmp_path / "u8.onnx", np.array(128, np.uint8)))
    with pytest.raises(ExportError, match=r"dq0 \(int8, zero point \[3\]\)"):
        check_qdq_for_tensorrt(_qdq_model(tmp_path / "asym.onnx", np.array(3, np.int8)))


def test_qdq_check_on_onnxruntime_quantized_models(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")],
    )
    fp32 = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(fp32))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32) + 1.0} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    def quantize(name, **extra):
        out = tmp_path / name
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, extra_options=extra)
        return out

    expected = r"b_DequantizeLinear \(int32, zero point \[0\]\), input_QuantizeLinear \(int8, zero point \[-\d+\]\)"
    with pytest.raises(ExportError, match=expected):
        check_qdq_for_tensorrt(quantize("default.onnx"))
    check_qdq_for_tensorrt(quantize("trt.onnx", ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False))


@pytest.mark.gpu
@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_engine_on_gpu(tmp_path, precision):
    torch = pytest.importorskip("torch")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()
    pre = Preprocessing(32, (0.5,) * 3, (0.5,) * 3, labels=("a", "b"))
    xs = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    src = export(model, "torch", "onnx", tmp_path / "onnx", ExportSpec(pre, check_inputs=[xs]))
    if precision == "int8":
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{"input": x[None]} for x in xs])

            def get_next(self):
                return next(self.it, None)
        src = tmp_path / "onnx" / "model_int8.onnx"
        quantize_static(str(tmp_path / "onnx" / "model.onnx"), str(src), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QuantizeBias": False})
    spec = ExportSpec(pre, precision=precision, check_inputs=[xs], engine_cache=tmp_path / "cache",
                      timing_cache=tmp_path / "timing.cache")
    engine = export(src, "onnx", "tensorrt", tmp_path / "trt", spec)
    info = json.loads(engine.with_suffix(".json").read_text())
    assert engine.stat().st_size > 0 and info["cache_hit"] is False and info["parity"]["passed"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    again = export(src, "onnx", "tensorrt", tmp_path / "trt2", spec)
    assert json.loads(again.with_suffix(".json").read_text())["cache_hit"] is True
