"""Deployment bundle: round trip, verification against golden outputs, tamper and overwrite handling."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.preprocess import Preprocessing
from exporters import ExportSpec, export
from exporters.bundle import BundleError, read_bundle, verify_bundle, write_bundle
from runtimes.execution import open_model

LABELS = ("cat", "dog", "fox", "owl", "yak")
PRE = Preprocessing(2, (0.5,) * 3, (0.25,) * 3, interpolation="bicubic", crop_pct=0.875, labels=LABELS)
RNG = np.random.default_rng(7)
W = RNG.standard_normal((12, 5)).astype(np.float32)
B = RNG.standard_normal(5).astype(np.float32)
SOURCES = {"onnx": "1" * 64, "calibration": "2" * 64}


def _linear_onnx(path, weight=W):
    """A real ONNX classifier over 3x2x2 images: Flatten → Gemm, dynamic batch."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(B, "B")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.fixture(scope="module")
def golden():
    inputs = RNG.standard_normal((16, 3, 2, 2)).astype(np.float32)
    return inputs, inputs.reshape(16, -1) @ W + B  # the reference computed without any runtime


@pytest.fixture()
def onnx_bundle(tmp_path, golden):
    src = _linear_onnx(tmp_path / "model.onnx")
    return write_bundle(src, tmp_path / "bundle", PRE, "fp32", SOURCES, *golden, runtime="onnxruntime")


def test_onnx_bundle_round_trip(onnx_bundle, golden):
    assert sorted(p.name for p in onnx_bundle.iterdir()) == ["golden.npz", "model.json", "model.onnx"]
    manifest = read_bundle(onnx_bundle)
    assert manifest["artifact"] == "model.onnx" and manifest["runtime"] == "onnxruntime"
    assert manifest["precision"] == "fp32" and manifest["labels"] == list(LABELS)
    assert Preprocessing.from_dict(manifest["preprocessing"]) == PRE
    assert manifest["source_hashes"] == SOURCES
    assert manifest["inputs"] == [{"name": "input", "shape": [None, 3, 2, 2]}]
    assert manifest["outputs"] == [{"name": "logits", "shape": [None, 5]}]
    expected = hashlib.sha256((onnx_bundle / "model.onnx").read_bytes()).hexdigest()
    assert manifest["files"]["model.onnx"] == expected and set(manifest["files"]) == {"model.onnx", "golden.npz"}
    with np.load(onnx_bundle / "golden.npz") as g:
        np.testing.assert_array_equal(g["inputs"], golden[0])
        np.testing.assert_allclose(g["outputs"], golden[1], rtol=1e-6)


def test_verify_bundle_passes_with_the_bundled_model(onnx_bundle):
    result = verify_bundle(onnx_bundle, open_model(onnx_bundle / "model.onnx", "onnx").run)
    assert result.passed and result.n_samples == 16
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0


def test_verify_bundle_fails_with_a_different_model(onnx_bundle, tmp_path):
    wrong = _linear_onnx(tmp_path / "wrong.onnx", weight=W * -1.0)
    result = verify_bundle(onnx_bundle, open_model(wrong, "onnx").run)
    assert not result.passed and result.max_abs_diff > 1e-3 and result.top1_agreement < 0.999


def test_tampered_file_is_reported(onnx_bundle):
    model = onnx_bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(BundleError, match=r"bundle file .*model\.onnx has sha256 .* re-copy the bundle"):
        verify_bundle(onnx_bundle, lambda x: x)
    (onnx_bundle / "golden.npz").unlink()
    with pytest.raises(BundleError, match="is missing"):
        read_bundle(onnx_bundle)


def test_rewrite_replaces_bundle_atomically(onnx_bundle, tmp_path, golden):
    inputs, outputs = golden
    write_bundle(tmp_path / "model.onnx", onnx_bundle, PRE, "fp16", SOURCES, inputs[:4], outputs[:4], "onnxruntime")
    manifest = json.loads((onnx_bundle / "model.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["preprocessing"]["precision"] == "fp16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "model.onnx"]  # no staging or old folders


def test_openvino_bundle_carries_xml_and_bin(tmp_path, golden):
    pytest.importorskip("openvino")

    src = _linear_onnx(tmp_path / "model.onnx")
    xml = export(src, "onnx", "openvino", tmp_path / "ir", ExportSpec(PRE, check_inputs=[golden[0]]))
    bundle = write_bundle(xml, tmp_path / "bundle", PRE, "fp32", SOURCES, *golden, runtime="openvino")
    assert sorted(p.name for p in bundle.iterdir()) == ["golden.npz", "model.bin", "model.json", "model.xml"]
    manifest = read_bundle(bundle)
    assert manifest["inputs"][0]["shape"] == [None, 3, 2, 2] and manifest["runtime"] == "openvino"
    assert verify_bundle(bundle, open_model(bundle / "model.xml", "openvino").run).passed


def test_incomplete_artifact_is_refused(tmp_path, golden):
    (tmp_path / "model.xml").write_text("<net/>")
    with pytest.raises(BundleError, match=r"has no model\.bin beside it"):
        write_bundle(tmp_path / "model.xml", tmp_path / "b", PRE, "fp32", SOURCES, *golden, runtime="openvino")
    with pytest.raises(BundleError, match="must be non-empty and of equal length"):
        write_bundle(_linear_onnx(tmp_path / "m.onnx"), tmp_path / "b", PRE, "fp32", SOURCES,
                     golden[0], golden[1][:3], runtime="onnxruntime")
    assert not (tmp_path / "b").exists()
