"""The export stage seals its bundles and fails, committing nothing, when one fails its check.

The store holds cheap upstream entries: placeholder finetune/distill/prune outputs and a quantize
entry with a real linear ONNX classifier over 2x2 digits and its ONNX Runtime Q/DQ version, each
committed under the key the runner computes, so `edgeship run export` runs export alone.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bench_fixture
from calibration.preprocess import Preprocessing
from exporters.bundle import read_bundle, seal

LABELS = tuple(str(d) for d in range(10))
PRE = Preprocessing(2, (0.5,) * 3, (0.5,) * 3, labels=LABELS)
SETS = ["export.openvino_precisions=[]", "export.tensorrt.precisions=[]", "export.golden_inputs=8",
        "run.threads=1"]


def _linear_onnx(path):
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(rng.standard_normal((12, 10)).astype(np.float32), "W"),
         numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "B")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


class _Reader:
    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


@pytest.fixture()
def store(tmp_path):
    """A store whose every stage before export is committed for `cfg`; returns (cfg, Store)."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from pipeline.artifact import Artifact, Format
    from pipeline.store import Store
    cfg = bench_fixture.config(tmp_path / "runs", SETS)
    st = Store(cfg.run.store)

    def placeholder(out):
        (out / "model.bin").write_bytes(b"upstream stages are not read by export")
        return {"model": Artifact.of(out, out / "model.bin", Format.data)}

    def quantize(out):
        fp32, int8 = _linear_onnx(out / "model_fp32.onnx"), out / "model_int8.onnx"
        calib = np.random.default_rng(4).standard_normal((16, 1, 3, 2, 2)).astype(np.float32)
        quantize_static(str(fp32), str(int8), _Reader([{"input": x} for x in calib]),
                        quant_format=QuantFormat.QDQ)
        return {f"onnx_{p}": Artifact.of(out, f, Format.onnx, {
            "preprocessing": PRE.with_(precision=p).to_dict(), "precision": p}) for p, f in
            (("fp32", fp32), ("int8", int8))}
    with st:
        finetune = bench_fixture._commit(st, cfg, "finetune", {}, placeholder)
        distill = bench_fixture._commit(st, cfg, "distill", {"finetune": finetune}, placeholder)
        prune = bench_fixture._commit(st, cfg, "prune", {"finetune": finetune, "distill": distill}, placeholder)
        bench_fixture._commit(st, cfg, "quantize", {"prune": prune}, quantize, {"int8_top1": None})
    return cfg, st


def _run_export(cfg) -> int:
    from pipeline.cli import main
    args = ["run", "export", "-q", "-c", "configs/default.yaml"]
    for item in [*bench_fixture.BENCH, *SETS, f"run.store={cfg.run.store}"]:
        args += ["--set", item]
    return main(args)


def test_failing_bundle_check_exits_6_and_commits_nothing(store, monkeypatch, capsys, restore_logging):
    cfg, st = store
    import pipeline.measure.scoring as scoring
    scored = scoring.predict
    # The golden outputs the stage records are 2.4 off what the bundled model computes.
    monkeypatch.setattr(scoring, "predict", lambda *a, **k: scored(*a, **k) + 2.4)
    assert _run_export(cfg) == 6
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(
        "edgeship: export onnx_fp32 failed its bundle check, so nothing was committed: bundle ")
    assert "does not reproduce its golden outputs: max |Δ| = 2.4 (tolerance <= 0.001)" in err
    assert "top-1 agreement = 1.0000 (minimum 0.999) over 8 inputs at fp32" in err
    assert st.entries("export") == [] and list((st.root / "export").iterdir()) == []


def test_export_records_each_bundle_seal(store, capsys, restore_logging):
    cfg, st = store
    assert _run_export(cfg) == 0
    [entry] = st.entries("export")
    assert sorted(entry.outputs) == ["onnx_fp32", "onnx_int8"]
    for name, artifact in entry.outputs.items():
        bundle = entry.path_of(name)
        recorded = artifact.metadata["bundle_sha256"]
        assert recorded == seal(bundle) and len(recorded) == 64
        assert read_bundle(bundle, recorded)["precision"] == name[-4:]
        check = entry.metrics["bundle_check"][name]
        assert check["passed"] and check["n_samples"] == 8 and check["max_abs_diff"] <= 1e-4
    golden = np.load(entry.path_of("onnx_int8") / "golden.npz")["outputs"]
    assert entry.metrics["bundle_check"]["onnx_int8"]["max_abs_tolerance"] == pytest.approx(
        0.25 * float(golden.max() - golden.min()), rel=1e-5)
    assert entry.metrics["bundle_check"]["onnx_fp32"]["max_abs_tolerance"] == 1e-3
    assert json.loads((entry.path_of("onnx_int8") / "model.json").read_text())["files"].keys() == {
        "model_int8.onnx", "golden.npz"}


def test_benchmark_measures_only_the_bundle_export_sealed(store, capsys, restore_logging):
    from exporters.bundle import BundleError
    from pipeline.measure.artifacts import candidates
    cfg, st = store
    assert _run_export(cfg) == 0
    [entry] = st.entries("export")
    assert {c.name for c in candidates({"export": entry})} == {"onnx_fp32", "onnx_int8"}
    model_json = entry.path_of("onnx_fp32") / "model.json"
    edited = model_json.read_text().replace('"fp32"', '"int8"')
    assert edited != model_json.read_text()
    model_json.write_text(edited)
    with pytest.raises(BundleError, match="model.json has sha256"):
        candidates({"export": entry})


def test_an_artifact_failing_parity_is_marked_failed_and_the_others_ship(store, monkeypatch, capsys,
                                                                          restore_logging):
    """One export failing its parity check (here an INT8 runtime that disagrees with FP32) does not
    stop the stage: it is recorded as failed, not bundled, and becomes a failed benchmark row."""
    import exporters
    from exporters.parity import ParityError, compare_logits
    from pipeline.cli import main
    from pipeline.measure.artifacts import candidates
    cfg, st = store
    ref = np.eye(10)[np.arange(40) % 10] * 5.0
    wrong = compare_logits(ref, np.roll(ref, 1, axis=1), "int8")   # every clear decision flipped

    def disagreeing(src, out_dir, spec):
        raise ParityError(f"parity check failed for model_int8.xml: {wrong.describe()}", wrong)

    monkeypatch.setitem(exporters.EXPORTERS, ("onnx", "openvino"), disagreeing)
    args = ["run", "export", "-q", "-c", "configs/default.yaml"]
    for item in [*bench_fixture.BENCH, *SETS, "export.openvino_precisions=[int8]", f"run.store={cfg.run.store}"]:
        args += ["--set", item]
    assert main(args) == 0
    [entry] = st.entries("export")
    assert sorted(entry.outputs) == ["onnx_fp32", "onnx_int8"]
    assert "top-1 agreement = 0.0000 (minimum 0.95)" in entry.metrics["failed"]["openvino_int8"]
    [failed] = [c for c in candidates({"export": entry}) if c.name == "openvino_int8"]
    assert failed.path is None and failed.failed.startswith("parity check failed")
    assert failed.not_deployable == f"failed at export: {failed.failed}"
    assert "openvino_int8 failed its parity check" in capsys.readouterr().err
