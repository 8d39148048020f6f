"""torch → ONNX export: parity with torch, opset, metadata, dynamic batch, atomic writes, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from calibration.preprocess import Preprocessing
from exporters import EXPORTERS, ExportError, ExportSpec, ParityError, UnknownExportEdge, export
from exporters.onnx_export import read_preprocessing
from runtimes.execution import open_model
from exporters.parity import check_export, compare_logits
from exporters.spec import PREPROCESSING_KEY

LABELS = tuple(f"class_{i}" for i in range(10))


class TinyNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
        )

    def forward(self, x):
        return self.body(x)


class TupleNet(TinyNet):
    def forward(self, x):
        return self.body(x), x.mean()


def _inputs(size: int, n: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _torch_logits(model, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is actually tested
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
    pre = Preprocessing(32, (0.5,) * 3, (0.25,) * 3, labels=LABELS)
    return model, pre, _inputs(32)


@pytest.fixture(scope="module")
def tiny_static(tiny, tmp_path_factory):
    model, pre, xs = tiny
    out = tmp_path_factory.mktemp("static")
    return export(model, "torch", "onnx", out, ExportSpec(pre, check_inputs=[xs]))


@pytest.fixture(scope="module")
def tiny_dynamic(tiny, tmp_path_factory):
    model, pre, xs = tiny
    out = tmp_path_factory.mktemp("dynamic")
    return export(model, "torch", "onnx", out, ExportSpec(pre, dynamic_batch=True, name="dyn", check_inputs=[xs]))


def test_tiny_cnn_fp32_parity(tiny, tiny_static):
    model, _, xs = tiny
    result = compare_logits(_torch_logits(model, xs), open_model(tiny_static, "onnx").run(xs), "fp32")
    assert result.n_samples == 32
    assert result.max_abs_diff <= 1e-3 and result.top1_agreement >= 0.999 and result.passed


def test_efficientnet_lite0_fp32_parity(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10).eval()
    pre = Preprocessing(64, (0.5,) * 3, (0.5,) * 3, labels=LABELS)
    xs = _inputs(64, seed=2)
    path = export(model, "torch", "onnx", tmp_path, ExportSpec(pre, check_inputs=[xs]))
    result = compare_logits(_torch_logits(model, xs), open_model(path, "onnx").run(xs), "fp32")
    assert result.max_abs_diff <= 1e-3, result.describe()
    assert result.top1_agreement >= 0.999, result.describe()


def test_opset_metadata_and_single_file(tiny_static):
    proto = onnx.load(str(tiny_static), load_external_data=False)
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets[""] == 18
    meta = {p.key: p.value for p in proto.metadata_props}
    stored = json.loads(meta[PREPROCESSING_KEY])
    assert stored["input_size"] == 32 and stored["std"] == [0.25] * 3 and stored["precision"] == "fp32"
    assert tuple(stored["labels"]) == LABELS
    assert read_preprocessing(tiny_static).labels == LABELS
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    # Weights embedded: one file in the folder, no initializer pointing at external data.
    assert sorted(p.name for p in tiny_static.parent.iterdir()) == ["model.onnx"]
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert sum(t.ByteSize() for t in proto.graph.initializer) > 3000  # the conv/linear weights are here


def test_static_export_has_fixed_batch_one(tiny_static):
    dim0 = onnx.load(str(tiny_static)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1


def test_dynamic_batch_runs_batch_1_and_4(tiny, tiny_dynamic):
    import onnxruntime as ort

    model, _, xs = tiny
    dim0 = onnx.load(str(tiny_dynamic)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    session = ort.InferenceSession(str(tiny_dynamic), providers=["CPUExecutionProvider"])
    for n in (1, 4):
        out = session.run(None, {"input": xs[:n]})[0]
        assert out.shape == (n, 10)
        assert np.abs(out - _torch_logits(model, xs[:n])).max() <= 1e-3


def test_parity_error_names_artifact_and_numbers(tiny, tiny_static):
    model, _, xs = tiny
    perturbed = TinyNet().eval()
    perturbed.load_state_dict(model.state_dict())
    with torch.no_grad():
        perturbed.body[-1].weight.mul_(1.5)
    with pytest.raises(ParityError) as err:
        check_export(lambda b: _torch_logits(perturbed, b), open_model(tiny_static, "onnx").run, [xs], "fp32",
                     artifact=str(tiny_static))
    message = str(err.value)
    assert str(tiny_static) in message and "max |Δ| =" in message and "tolerance <= 0.001" in message
    assert "over 32 inputs at fp32" in message
    assert err.value.result.max_abs_diff > 1e-3 and not err.value.result.passed


def _near_tie_logits(n=100, classes=10, seed=0):
    """Logits with a clear winner on the first half and a near-tie (lead 2% of range) on the rest."""
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0.0, 1.0, (n, classes))
    ref[:, 0] = 5.0                               # every logit range is ~5
    ref[n // 2:, 1] = 4.9                         # runner-up within 0.1 of the winner
    return ref


def test_int8_parity_ignores_flipped_near_ties():
    ref = _near_tie_logits()
    out = ref.copy()
    out[50:, 1] += 0.2                            # rounding noise flips every near-tie
    result = compare_logits(ref, out, "int8")
    assert result.passed and result.n_judged == 50 and result.top1_agreement == 1.0
    assert "50 clearly decided of 100 inputs" in result.describe()
    assert compare_logits(ref, out, "fp32").top1_agreement == 0.5


def test_fp16_parity_ignores_a_flipped_near_tie_but_not_a_clear_flip():
    ref = _near_tie_logits()
    out = ref.copy()
    out[60, 1] += 0.15                            # half-precision rounding flips one near-tie
    result = compare_logits(ref, out, "fp16")
    assert result.passed and result.n_judged == 50 and result.max_abs_diff == pytest.approx(0.15)
    out[3, 2] = 5.2                               # a clear decision flips
    broken = compare_logits(ref, out, "fp16")
    assert not broken.passed and broken.top1_agreement == 0.98


def test_int8_parity_fails_when_clear_decisions_flip():
    ref = _near_tie_logits()
    out = ref.copy()
    out[:5, 2] = 9.0                              # 5 of the 50 clear decisions change class
    result = compare_logits(ref, out, "int8")
    assert not result.passed and result.top1_agreement == 0.9


def test_failed_export_leaves_no_file(tmp_path):
    pre = Preprocessing(16, (0.5,) * 3, (0.5,) * 3, labels=LABELS)
    with pytest.raises(ExportError, match="single logits tensor"):
        export(TupleNet().eval(), "torch", "onnx", tmp_path, ExportSpec(pre))
    assert list(tmp_path.iterdir()) == []  # neither the .onnx nor the staging folder remains


def test_training_mode_model_is_refused(tmp_path):
    pre = Preprocessing(16, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match=r"call model.eval\(\) before export"):
        export(TinyNet().train(), "torch", "onnx", tmp_path, ExportSpec(pre))


def test_unknown_edge_names_the_known_ones(tmp_path):
    pre = Preprocessing(16, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(UnknownExportEdge) as err:
        export(None, "openvino", "tensorrt", tmp_path, ExportSpec(pre))
    assert str(err.value) == ("no exporter for openvino→tensorrt; known edges: "
                              "torch→onnx, onnx→openvino, onnx→tensorrt")
    assert set(EXPORTERS) == {("torch", "onnx"), ("onnx", "openvino"), ("onnx", "tensorrt")}


def test_spec_turns_strings_into_enums_and_rejects_bad_values():
    pre = Preprocessing(16, (0.5,) * 3, (0.5,) * 3)
    assert ExportSpec(pre, precision="FP16").precision.value == "fp16"
    with pytest.raises(ValueError, match="precision 'int4' is not one of fp32, fp16, int8"):
        ExportSpec(pre, precision="int4")
    with pytest.raises(ValueError, match="optimization_level 9"):
        ExportSpec(pre, optimization_level=9)


def test_wrong_check_inputs_and_precision_are_refused(tiny, tmp_path):
    model, pre, xs = tiny
    with pytest.raises(ValueError, match=r"check_inputs\[0\] has shape \(32, 3, 16, 16\); expected \(N, 3, 32, 32\)"):
        export(model, "torch", "onnx", tmp_path, ExportSpec(pre, check_inputs=[xs[:, :, :16, :16]]))
    with pytest.raises(ValueError, match="torch→onnx writes fp32 ONNX, not fp16"):
        export(model, "torch", "onnx", tmp_path, ExportSpec(pre, precision="fp16"))
    assert list(tmp_path.iterdir()) == []


def test_importing_exporters_loads_no_heavy_library():
    code = ("import sys, exporters; "
            "print(sorted(m for m in ('torch','onnx','onnxruntime','openvino','tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
