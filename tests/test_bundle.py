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
from exporters.bundle import BundleError, read_bundle, seal, verify_bundle, write_bundle
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
    assert sorted(p.name for p in onnx_bundle.iterdir()) == ["golden.npz", "model.json", "model.json.sha256",
                                                             "model.onnx"]
    sealed = hashlib.sha256((onnx_bundle / "model.json").read_bytes()).hexdigest()
    assert (onnx_bundle / "model.json.sha256").read_text() == f"{sealed}  model.json\n" == f"{seal(onnx_bundle)}  model.json\n"
    manifest = read_bundle(onnx_bundle, expected_sha256=sealed)
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


def test_verify_bundle_raises_with_a_different_model(onnx_bundle, tmp_path):
    wrong = _linear_onnx(tmp_path / "wrong.onnx", weight=W * -1.0)
    with pytest.raises(BundleError, match=r"does not reproduce its golden outputs: max \|Δ\| = \d+.*"
                                          r"\(tolerance <= 0\.001\), top-1 agreement = 0\.\d+ \(minimum 0\.999\)") as e:
        verify_bundle(onnx_bundle, open_model(wrong, "onnx").run)
    assert e.value.exit_code == 6


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
    assert sorted(p.name for p in bundle.iterdir()) == ["golden.npz", "model.bin", "model.json",
                                                        "model.json.sha256", "model.xml"]
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


# --- tampering: every change to a bundle is refused with a message naming what differs -----------

WS = W * 0.5  # golden logits spanning 6.77, so the int8 bound is 0.25 * 6.77 = 1.69


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def sealed(tmp_path, golden):
    inputs = golden[0]
    outputs = inputs.reshape(len(inputs), -1) @ WS + B
    src = _linear_onnx(tmp_path / "model.onnx", weight=WS)
    return write_bundle(src, tmp_path / "bundle", PRE, "fp32", SOURCES, inputs, outputs, runtime="onnxruntime")


def _edit(change, reseal=False):
    """A tampering step that rewrites model.json (and, with `reseal`, its sidecar to match)."""
    def tamper(bundle):
        path = bundle / "model.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if reseal:
            (bundle / "model.json.sha256").write_text(f"{_sha(path)}  model.json\n")
    return tamper


def _int8(m):
    m["precision"] = m["preprocessing"]["precision"] = "int8"


def _rename(old, new):
    def change(m):
        m["files"][new] = m["files"].pop(old)
    return change


def _set(key, value, inner=None):
    def change(m):
        (m[inner] if inner else m)[key] = value
    return change


# (case, tamper, expected hash: None | "orig" | a hash, logit offset of the model run, message parts)
TAMPERING = [
    ("int8 edit, logits off by 2.4", _edit(_int8), None, 2.4,
     ["{dir}/model.json has sha256 {actual}, model.json.sha256 records {orig}", "model.json was edited"]),
    ("int8 edit re-sealed, logits off by 2.4", _edit(_int8, reseal=True), None, 2.4,
     ["{dir} does not reproduce its golden outputs: max |Δ| = 2.4 (tolerance <= 1.69), "
      "top-1 agreement = 1.0000 (minimum 0.95) over 11 clearly decided of 16 inputs at int8"]),
    ("int8 edit re-sealed, against the export manifest", _edit(_int8, reseal=True), "orig", 2.4,
     ["{dir}/model.json has sha256 {actual}, the export manifest records {orig}"]),
    ("artifact dropped from files", _edit(lambda m: m["files"].pop("model.onnx"), reseal=True), None, 0,
     ["does not list the artifact 'model.onnx' in 'files'"]),
    ("golden dropped from files", _edit(lambda m: m["files"].pop("golden.npz"), reseal=True), None, 0,
     ["does not list the golden outputs 'golden.npz' in 'files'"]),
    ("preprocessing edited", _edit(_set("mean", [0.0] * 3, "preprocessing")), None, 0,
     ["{dir}/model.json has sha256 {actual}, model.json.sha256 records {orig}"]),
    ("preprocessing edited re-sealed, against the export manifest",
     _edit(_set("mean", [0.0] * 3, "preprocessing"), reseal=True), "orig", 0,
     ["has sha256 {actual}, the export manifest records {orig}"]),
    ("labels edited", _edit(_set("labels", ["a", "b", "c", "d", "e"])), None, 0,
     ["{dir}/model.json has sha256 {actual}, model.json.sha256 records {orig}"]),
    ("labels edited re-sealed", _edit(_set("labels", ["a", "b", "c", "d", "e"]), reseal=True), None, 0,
     ["labels ['a', 'b', 'c', 'd', 'e'] differ from preprocessing.labels ['cat', 'dog', 'fox', 'owl', 'yak']"]),
    ("precision edited alone re-sealed", _edit(_set("precision", "int8"), reseal=True), None, 0,
     ["preprocessing.precision 'fp32' differs from precision 'int8'"]),
    ("file name ../model.onnx", _edit(_rename("model.onnx", "../model.onnx"), reseal=True), None, 0,
     ["lists file '../model.onnx': entries must be plain file names inside the bundle folder"]),
    ("file name /etc/passwd", _edit(_set("/etc/passwd", "0" * 64, "files"), reseal=True), None, 0,
     ["lists file '/etc/passwd': entries must be plain file names inside the bundle folder"]),
    ("extra file", lambda b: (b / "notes.txt").write_text("x"), None, 0,
     ["{dir} holds notes.txt, which model.json does not list"]),
    ("missing golden", lambda b: (b / "golden.npz").unlink(), None, 0,
     ["{dir} is missing golden.npz; copy the whole folder"]),
    ("model.json against the sidecar", lambda b: (b / "model.json.sha256").write_text(f"{'0' * 64}  model.json\n"),
     None, 0, ["{dir}/model.json has sha256 {actual}, model.json.sha256 records " + "0" * 64]),
    ("model.json against the expected hash", lambda b: None, "f" * 64, 0,
     ["{dir}/model.json has sha256 {actual}, the export manifest records " + "f" * 64]),
    ("sidecar missing", lambda b: (b / "model.json.sha256").unlink(), None, 0,
     ["{dir} has no model.json.sha256 (the sha256 of model.json)"]),
]


@pytest.mark.parametrize("tamper, expected, offset, parts", [c[1:] for c in TAMPERING],
                         ids=[c[0] for c in TAMPERING])
def test_tampered_bundle_is_refused(sealed, tamper, expected, offset, parts):
    orig = seal(sealed)
    assert verify_bundle(sealed, lambda x: x.reshape(len(x), -1) @ WS + B, orig).passed
    tamper(sealed)
    with pytest.raises(BundleError) as e:
        verify_bundle(sealed, lambda x: x.reshape(len(x), -1) @ WS + B + offset,
                      orig if expected == "orig" else expected)
    assert e.value.exit_code == 6
    actual = _sha(sealed / "model.json") if (sealed / "model.json").is_file() else None
    for part in parts:
        assert part.format(dir=sealed, actual=actual, orig=orig) in str(e.value)


def test_int8_bundle_holds_logits_to_a_quarter_of_the_golden_range(sealed, golden):
    inputs = golden[0]
    outputs = inputs.reshape(len(inputs), -1) @ WS + B
    bundle = write_bundle(sealed / "model.onnx", sealed.parent / "int8", PRE, "int8", SOURCES, inputs, outputs,
                          runtime="onnxruntime")
    spread = float(outputs.max() - outputs.min())
    assert spread == pytest.approx(6.768, abs=1e-3)
    drifted = verify_bundle(bundle, lambda x: x.reshape(len(x), -1) @ WS + B + 1.6)
    assert drifted.max_abs_tolerance == pytest.approx(0.25 * spread, rel=1e-6)
    assert drifted.max_abs_diff == pytest.approx(1.6, abs=1e-5) and drifted.top1_agreement == 1.0
    with pytest.raises(BundleError, match=r"max \|Δ\| = 1\.8 \(tolerance <= 1\.69\)"):
        verify_bundle(bundle, lambda x: x.reshape(len(x), -1) @ WS + B + 1.8)
