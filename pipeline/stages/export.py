"""export: ONNX, OpenVINO IR and TensorRT engines as self-verifying bundles, each scored in its runtime."""
from __future__ import annotations

import itertools
from pathlib import Path

from pipeline.artifact import Artifact, Format
from pipeline.config import Config
from pipeline.stages.base import Context, Result, Stage
from pipeline.stages.common import data_params

# Accuracy of an artifact is measured in f32 arithmetic where the runtime would otherwise pick
# bf16 on its own (OpenVINO on CPUs with AVX-512 BF16): the number describes the file we ship.
OPENVINO_SCORING_PRECISION = "f32"


def params(cfg: Config) -> dict:
    return {**data_params(cfg), "export": cfg.export.model_dump(mode="json"),
            "threads": cfg.run.thread_count()}


def _runtime_for(fmt: Format) -> str:
    return {Format.onnx: "onnxruntime", Format.openvino: "openvino", Format.tensorrt: "tensorrt"}[fmt]


def _session(fmt: Format, model_file: Path, threads: int):
    import runtimes
    if fmt == Format.openvino:
        return runtimes.get("openvino").load(model_file, "cpu", threads,
                                             inference_precision=OPENVINO_SCORING_PRECISION)
    if fmt == Format.tensorrt:
        return runtimes.get("tensorrt").load(model_file, "cuda")
    return runtimes.get("onnxruntime").load(model_file, "cpu", threads)


class Exporter:
    """Bundles artifacts into the stage folder and records their accuracy, parity and hashes."""

    def __init__(self, ctx: Context, pre, val, sources: dict[str, str]):
        from exporters.spec import ExportSpec
        self.ctx, self.pre, self.val, self.sources = ctx, pre, val, sources
        self.work = ctx.out_dir / ".work"
        self.outputs: dict[str, Artifact] = {}
        self.metrics: dict = {"top1": {}, "unavailable": {}, "bundle_check": {}}
        e = ctx.cfg.export
        # Parity is judged on real val images: int8 argmax on noise inputs is a coin toss.
        checks = list(itertools.islice(val.chunks(pre, 1), 64))
        self.spec = lambda precision: ExportSpec(
            preprocessing=pre, precision=precision, opset=e.opset, dynamic_batch=e.dynamic_batch,
            check_inputs=checks,
            optimization_level=e.tensorrt.optimization_level, workspace_mb=e.tensorrt.workspace_mb,
            use_trtexec=e.tensorrt.use_trtexec,
            timing_cache=ctx.store_root / "cache" / "tensorrt" / "timing.cache",
            engine_cache=ctx.store_root / "cache" / "tensorrt" / "engines")

    def add(self, name: str, fmt: Format, model_file: Path, precision: str) -> None:
        """Score `model_file` in its own runtime, then bundle it with golden inputs and outputs."""
        from exporters.bundle import verify_bundle, write_bundle
        from pipeline.report.scoring import predict, top1
        threads = self.ctx.cfg.run.thread_count()
        session = _session(fmt, model_file, threads)
        logits = predict(session, self.val, self.pre, chunk=1, fixed_batch=1)
        self.metrics["top1"][name] = top1(logits.argmax(1), self.val.targets)
        golden_n = self.ctx.cfg.export.golden_inputs
        golden_in = self.val.batch(self.pre, golden_n)
        bundle = write_bundle(model_file, self.ctx.out_dir / name, self.pre, precision, self.sources,
                              golden_in, logits[:golden_n], _runtime_for(fmt))
        shipped = bundle / model_file.name
        check = verify_bundle(bundle, lambda x: predict_one_by_one(_session(fmt, shipped, threads), x))
        self.metrics["bundle_check"][name] = check.passed
        meta = {"preprocessing": self.pre.with_(precision=precision).to_dict(), "precision": precision,
                "runtime": _runtime_for(fmt), "model_file": model_file.name}
        self.outputs[name] = Artifact.of(self.ctx.out_dir, bundle, fmt, meta)
        print(f"  export {name:<15} top-1 {self.metrics['top1'][name]:.2f}% in {_runtime_for(fmt)}",
              flush=True)


def predict_one_by_one(session, x):
    import numpy as np
    return np.concatenate([session.run(x[i:i + 1]) for i in range(len(x))])


def run(ctx: Context) -> Result:
    import shutil

    from exporters.openvino_export import export_onnx_to_openvino
    from exporters.spec import ExportUnavailable
    from exporters.tensorrt_export import export_onnx_to_tensorrt
    from pipeline.data import load_splits
    from pipeline.report.scoring import ValImages

    cfg, q = ctx.cfg, ctx.input("quantize")
    fp32, int8 = q.path_of("onnx_fp32"), q.path_of("onnx_int8")
    pre = q.outputs["onnx_fp32"].preprocessing
    val = ValImages(load_splits(cfg.data, cfg.run.seed).val)
    sources = {"onnx_fp32": q.outputs["onnx_fp32"].sha256, "onnx_int8": q.outputs["onnx_int8"].sha256}
    ex = Exporter(ctx, pre, val, sources)
    ex.add("onnx_fp32", Format.onnx, fp32, "fp32")
    ex.add("onnx_int8", Format.onnx, int8, "int8")
    for precision in cfg.export.openvino_precisions:
        src = int8 if precision == "int8" else fp32
        xml = export_onnx_to_openvino(src, ex.work / f"openvino_{precision}", ex.spec(precision))
        ex.add(f"openvino_{precision}", Format.openvino, xml, precision)
    for precision in cfg.export.tensorrt.precisions:
        name = f"tensorrt_{precision}"
        try:
            engine = export_onnx_to_tensorrt(int8 if precision == "int8" else fp32,
                                             ex.work / name, ex.spec(precision))
        except ExportUnavailable as e:
            ex.metrics["unavailable"][name] = e.reason
            print(f"  export {name:<15} skipped: {e.reason}", flush=True)
            continue
        ex.add(name, Format.tensorrt, engine, precision)
    shutil.rmtree(ex.work, ignore_errors=True)
    ex.metrics["quantize"] = {"fp32_top1": q.metrics.get("fp32_top1"), "int8_top1": q.metrics.get("int8_top1")}
    return Result(outputs=ex.outputs, metrics=ex.metrics)


STAGE = Stage(name="export", version=2, deps=("quantize",), params=params, run=run,
              help="ONNX, OpenVINO IR and TensorRT engines as verified deployment bundles")
