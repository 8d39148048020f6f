"""A small real artifact store for the benchmark, report and check tests.

Two timm test networks (seeds 1 and 0) with linear heads fitted on real digits: the teacher
and the student (which stands in for the pruned model too), saved as torch artifacts; the
student exported to ONNX, quantized to a Q/DQ ONNX with ONNX Runtime and converted to OpenVINO
IR. Each entry is committed through the real Store under the key the runner computes for it,
so `edgeship run check` finds every upstream stage cached. Export says why TensorRT was not
built, as the export stage does on a machine without it. Built once per test session and shared
by the three test files.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np

INPUT = 32
BENCH = ["benchmark.min_seconds=0.05", "benchmark.min_iterations=10", "benchmark.warmup=2",
         "benchmark.threads=1", "benchmark.batch_sizes=[1,2]", "benchmark.accuracy_images=150",
         "benchmark.deploy_tolerance=3.0", "run.threads=1",
         # the runtimes whose rows these tests count (a runtime added later has its own tests)
         "benchmark.runtimes=[torch,onnxruntime,openvino,tensorrt]"]
TRT_REASON = ("TensorRT is not installed: pip install 'edgeship[tensorrt]' on a machine with an "
              "NVIDIA GPU")


def config(store: Path, extra: list[str] = ()):
    from pipeline.config_load import load_config
    return load_config("configs/default.yaml", [*BENCH, f"run.store={store}", *extra])


def _fit_head(model, pre, images, n: int = 400) -> None:
    """Least-squares linear head on the network's pooled features: a real classifier in a second."""
    import torch
    x = torch.from_numpy(np.stack([pre(images.image(i)) for i in range(n)]))
    y = np.eye(len(pre.labels), dtype=np.float32)[images.targets[:n]]
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    feats = np.concatenate([feats, np.ones((n, 1), np.float32)], 1).astype(np.float64)
    # Ridge keeps the weights (and so the logits) small: exports are checked to 1e-3 absolute.
    gram = feats.T @ feats
    w = np.linalg.solve(gram + 0.1 * np.trace(gram) / len(gram) * np.eye(len(gram)), feats.T @ (2 * y - 1))
    w = w.astype(np.float32)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w[:-1].T.copy()))
        head.bias.copy_(torch.from_numpy(w[-1].copy()))


def _commit(store, cfg, stage: str, inputs: dict, make, metrics: dict | None = None):
    """Commit an entry under the key the runner computes for it, so `edgeship run` finds it cached."""
    from pipeline.runner import stage_key
    from pipeline.stages import STAGES
    from pipeline.store import Manifest
    spec = next(s for s in STAGES if s.name == stage)
    key = stage_key(spec, cfg, inputs)
    staging = store.staging_dir(stage, key)
    outputs = make(staging)
    lineage = {d: {"key": m.key, "outputs": {k: a.sha256 for k, a in m.outputs.items()}}
               for d, m in inputs.items()}
    return store.commit(staging, Manifest(stage, spec.version, key, spec.params(cfg), lineage, outputs,
                                          metrics or {}, timings={"finished": time.time()}))


def _torch_model(store, cfg, stage: str, inputs: dict, arch: str, splits, seed: int, model=None):
    import torch
    from pipeline.models.registry import ModelSpec, build_model, model_preprocessing
    from pipeline.models.loading import save_model
    torch.manual_seed(seed)
    spec = ModelSpec(arch, len(splits.classes))
    pre = model_preprocessing(spec, splits.classes, INPUT, 1.0)
    if model is None:
        model = build_model(spec, "none").eval()
        _fit_head(model, pre, splits.train)
    return model, pre, _commit(store, cfg, stage, inputs,
                               lambda out: {"model": save_model(model, spec, pre, out)}, {"val_top1": None})


class _Reader:
    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


def build(root: Path) -> dict:
    """The store under `root` (built on first call); returns {stage: Manifest}."""
    from pipeline.artifact import Artifact, Format
    from pipeline.config import DataSpec
    from pipeline.data import load_splits
    from pipeline.store import Store
    store = Store(root)
    done = root / "done.json"
    if done.is_file():
        return {s: store.get(s, k) for s, k in json.loads(done.read_text()).items()}
    shutil.rmtree(root, ignore_errors=True)
    splits = load_splits(DataSpec())
    cfg = config(root)
    with store:
        _, _, finetune = _torch_model(store, cfg, "finetune", {}, "test_convnext", splits, 1)
        student, pre, distill = _torch_model(store, cfg, "distill", {"finetune": finetune},
                                             "test_convnext", splits, 0)
        # The "pruned" student is the student itself: enough to exercise the lineage.
        _, _, prune = _torch_model(store, cfg, "prune", {"finetune": finetune, "distill": distill},
                                   "test_convnext", splits, 0, model=student)

        def quantize(out: Path) -> dict:
            from onnxruntime.quantization import QuantFormat, quantize_static
            from exporters.onnx_export import export_torch_to_onnx
            from exporters.spec import ExportSpec
            fp32 = export_torch_to_onnx(student, out, ExportSpec(preprocessing=pre, name="model_fp32"))
            calib = [{"input": pre(splits.train.image(i))[None]} for i in range(16)]
            int8 = out / "model_int8.onnx"
            quantize_static(str(fp32), str(int8), _Reader(calib), quant_format=QuantFormat.QDQ,
                            per_channel=True)
            return {"onnx_fp32": Artifact.of(out, fp32, Format.onnx, {"preprocessing": pre.to_dict(),
                                                                       "precision": "fp32"}),
                    "onnx_int8": Artifact.of(out, int8, Format.onnx, {
                        "preprocessing": pre.with_(precision="int8").to_dict(), "precision": "int8"})}
        quant = _commit(store, cfg, "quantize", {"prune": prune}, quantize,
                        {"int8_top1": 0.0, "float_layers": []})

        def export(out: Path) -> dict:
            outputs = {}
            # The fp32 ONNX as a bundle folder, the int8 ONNX as a bare file: both layouts resolve.
            bundle = out / "onnx_fp32"
            bundle.mkdir()
            shutil.copy(quant.path_of("onnx_fp32"), bundle / "model_fp32.onnx")
            outputs["onnx_fp32"] = Artifact.of(out, bundle, Format.onnx, {
                "preprocessing": pre.to_dict(), "precision": "fp32", "model_file": "model_fp32.onnx"})
            shutil.copy(quant.path_of("onnx_int8"), out / "model_int8.onnx")
            outputs["onnx_int8"] = quant.outputs["onnx_int8"].__class__(
                Format.onnx, "model_int8.onnx", quant.outputs["onnx_int8"].sha256,
                quant.outputs["onnx_int8"].metadata)
            if importlib.util.find_spec("openvino") is None:
                return outputs      # a GPU image without OpenVINO (.ci/gpu_check.py): ONNX rows only
            import openvino as ov
            for precision in ("fp32", "fp16"):
                folder = out / f"openvino_{precision}"
                folder.mkdir()
                model = ov.convert_model(str(quant.path_of("onnx_fp32")))
                ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=precision == "fp16")
                outputs[f"openvino_{precision}"] = Artifact.of(out, folder, Format.openvino, {
                    "preprocessing": pre.with_(precision=precision).to_dict(), "precision": precision,
                    "model_file": "model.xml", "runtime": "openvino"})
            return outputs
        export_m = _commit(store, cfg, "export", {"quantize": quant}, export,
                           {"unavailable": {"tensorrt_fp16": TRT_REASON}})
    manifests = {"finetune": finetune, "distill": distill, "prune": prune, "quantize": quant,
                 "export": export_m}
    done.write_text(json.dumps({s: m.key for s, m in manifests.items()}))
    return manifests


def run_stage(root: Path, stage, cfg, inputs: dict):
    """Run one stage exactly as the runner does (key, staging folder, commit), or reuse its entry."""
    from pipeline.runner import _execute, stage_key
    from pipeline.store import Store
    store = Store(root)
    key = stage_key(stage, cfg, inputs)
    hit = store.get(stage.name, key)
    if hit is not None:
        return hit
    with store:
        return _execute(stage, cfg, store, key, inputs, True)


def report(root: Path, cfg=None) -> dict:
    """Benchmark (batch 1 only, to stay quick) and report stages on the fixture store;
    returns the manifests by stage, benchmark and report included."""
    from pipeline.stages.benchmark import STAGE as BENCHMARK
    from pipeline.stages.report import STAGE as REPORT
    manifests = dict(build(root))
    cfg = cfg or config(root, ["benchmark.batch_sizes=[1]"])
    manifests["benchmark"] = run_stage(root, BENCHMARK, cfg, manifests)
    manifests["report"] = run_stage(root, REPORT, cfg, manifests)
    return manifests
