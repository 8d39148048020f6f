"""NNCF's quantizer on the tiny CNN of tests/test_quantize.py, and the uint8 re-encoding of signed
activations that lets ONNX Runtime fuse what NNCF writes."""
import numpy as np
import pytest
from test_quantize import PRE, agreement, correct, hostile_node_names, preprocessing_meta, world  # noqa: F401

from exporters.onnx_int8 import quantize_onnx
from exporters.quant_search import accuracy_aware_quantize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402


def test_nncf_quantization_runs(world):
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'edgeship[nncf]')")
    from exporters.onnx_int8_nncf import quantize_onnx_nncf

    plain = world["paths"]["plain"]
    path, info = quantize_onnx_nncf(plain, world["tmp"] / "nncf.onnx", world["source"])
    assert info["quantizer"] == "nncf" and info["bias_correction"] == "fast"
    assert info["overflow_fix"] == ("disable" if info["scheme"] == "u8s8" else "enable")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(path)).graph.node}
    assert len(info["quantized_layers"]) == 4
    quantized = onnx.load(str(path))
    zero_points = {i.name: numpy_helper.to_array(i).dtype for i in quantized.graph.initializer}
    activations = {zero_points[n.input[2]] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    assert activations == ({np.dtype(np.int8)} if info["scheme"] == "s8s8" else {np.dtype(np.uint8)})
    assert agreement(world, plain, path) >= 0.90
    assert preprocessing_meta(path) == PRE.to_dict()
    with pytest.raises(ValueError, match="'u8u8' is not available with NNCF"):
        quantize_onnx_nncf(plain, world["tmp"] / "x.onnx", world["source"], scheme="u8u8")


def test_unsigned_activations_change_no_value_and_let_onnxruntime_fuse(world, tmp_path):
    """int8 activations re-encoded as uint8 (zero point + 128) dequantize to the same values, and
    ONNX Runtime's x86 CPU kernels then run every convolution as QLinearConv."""
    from exporters.onnx_int8 import unsigned_activations

    signed, _ = quantize_onnx(world["paths"]["plain"], tmp_path / "s8.onnx", world["source"], scheme="s8s8")
    model = onnx.load(str(signed))
    activations = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert unsigned_activations(model) == activations > 0
    unsigned = tmp_path / "u8.onnx"
    onnx.save(model, str(unsigned))
    onnx.checker.check_model(str(unsigned), full_check=True)

    def session(path, level, saved=None):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        if saved:
            options.optimized_model_filepath = str(saved)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    x = world["x_test"][:64]
    unoptimized = ort.GraphOptimizationLevel.ORT_DISABLE_ALL      # Q/DQ as the ONNX spec defines them
    np.testing.assert_array_equal(session(signed, unoptimized).run(None, {"input": x})[0],
                                  session(unsigned, unoptimized).run(None, {"input": x})[0])
    session(unsigned, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, tmp_path / "optimized.onnx")
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("QLinearConv") == 3 and "Conv" not in fused


def test_nncf_search_keeps_the_hostile_layer_in_float(world):
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'edgeship[nncf]')")
    from exporters.onnx_int8_nncf import quantize_onnx_nncf

    (hostile,) = hostile_node_names(world["paths"]["hostile1"])
    _, report = accuracy_aware_quantize(
        world["paths"]["hostile1"], world["tmp"] / "search-nncf", world["source"],
        evaluate=lambda p: correct(world, p), max_drop=2.0,
        quantize_fn=quantize_onnx_nncf, sensitivity_inputs=world["sens_inputs"],
    )
    assert report["excluded"] == [hostile] and report["quantizer"]["quantizer"] == "nncf"
    assert report["final_drop"] <= 2.0
