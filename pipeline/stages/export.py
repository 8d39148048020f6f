"""export: ONNX, OpenVINO IR and TensorRT engines as self-verifying bundles, each scored in its runtime."""
from __future__ import annotations

import functools
import itertools
import logging
from pathlib import Path

import numpy as np

from pipeline.artifact import Artifact, Format
from pipeline.config import Config
from pipeline.stages.base import Context, Result, Stage
from pipeline.stages.common import data_params

log = logging.getLogger(__name__)


def params(cfg: Config) -> dict:
    # A format skipped because its exporter cannot run here is exported once it can.
    import exporters
    runnable = sorted({fmt.value for fmt, _ in _requested(cfg)
                       if exporters.unavailable(Format.onnx, fmt) is None})
    return {**data_params(cfg), "export": cfg.export.model_dump(mode="json"),
            "threads": cfg.run.thread_count(), "runnable": runnable}


def _requested(cfg: Config) -> list[tuple[Format, str]]:
    """(target format, precision) of every conversion the config asks for, in order."""
    return ([(Format.openvino, p) for p in cfg.export.openvino_precisions]
            + [(Format.tensorrt, p) for p in cfg.export.tensorrt.precisions])


class Exporter:
    """Bundles artifacts into the stage folder and records their accuracy, parity and hashes."""

    def __init__(self, ctx: Context, pre, val, sources: dict[str, str], fp32: Path, int8_note: str | None):
        from exporters.spec import ExportSpec
        self.ctx, self.pre, self.val, self.sources = ctx, pre, val, sources
        self.int8_note = int8_note  # why INT8 files are not deployable (quantize missed its budget)
        self.work = ctx.out_dir / ".work"
        self.outputs: dict[str, Artifact] = {}
        self.predictions: dict[str, np.ndarray] = {}
        self.metrics: dict = {"top1": {}, "unavailable": {}, "failed": {}, "bundle_check": {}}
        e = ctx.cfg.export
        # Parity is judged on real val images: int8 argmax on noise inputs is a coin toss.
        checks = list(itertools.islice(val.chunks(pre, 1), 64))
        self.spec = lambda precision: ExportSpec(
            preprocessing=pre, precision=precision, opset=e.opset, dynamic_batch=e.dynamic_batch,
            check_inputs=checks, reference=fp32 if precision == "int8" else None,
            optimization_level=e.tensorrt.optimization_level, workspace_mb=e.tensorrt.workspace_mb,
            use_trtexec=e.tensorrt.use_trtexec,
            timing_cache=ctx.store_root / "cache" / "tensorrt" / "timing.cache",
            engine_cache=ctx.store_root / "cache" / "tensorrt" / "engines")

    def convert(self, src: Path, fmt: Format, precision: str) -> None:
        """Convert the ONNX `src` to `fmt` with the registered exporter, then score and bundle it;
        an exporter that cannot run here is recorded with its reason, and one whose artifact fails
        its parity check is recorded as failed: it is not bundled, and the others go on."""
        import exporters
        name = f"{fmt.value}_{precision}"
        try:
            model_file = exporters.export(src, Format.onnx, fmt, self.work / name, self.spec(precision))
        except exporters.ExportUnavailable as e:
            self.metrics["unavailable"][name] = e.reason
            log.info("  export %-15s skipped: %s", name, e.reason)
            return
        except exporters.ParityError as e:
            self.metrics["failed"][name] = str(e)
            log.warning("export %s failed its parity check, so it is not bundled or deployed; the other "
                        "artifacts go on: %s", name, e)
            return
        self.add(name, fmt, model_file, precision)

    def add(self, name: str, fmt: Format, model_file: Path, precision: str) -> None:
        """Score `model_file` in its own runtime, bundle it with golden inputs and outputs, and check
        the bundle as a device would (raises BundleError, failing the stage, when it differs)."""
        from exporters.bundle import BundleError, seal, verify_bundle, write_bundle
        from pipeline.measure.scoring import predict, top1
        from runtimes.execution import open_model
        threads = self.ctx.cfg.run.thread_count()
        loaded = open_model(model_file, fmt, threads=threads, precision=precision)
        logits = predict(loaded, self.val, self.pre, chunk=1)
        self.metrics["top1"][name] = top1(logits.argmax(1), self.val.targets)
        self.predictions[name] = logits.argmax(1)
        golden_n = self.ctx.cfg.export.golden_inputs
        golden_in = self.val.batch(self.pre, golden_n)
        bundle = write_bundle(model_file, self.ctx.out_dir / name, self.pre, precision, self.sources,
                              golden_in, logits[:golden_n], loaded.runtime)
        sealed = seal(bundle)
        shipped = open_model(bundle / model_file.name, fmt, threads=threads, precision=precision)
        # A bundle that does not reproduce its golden outputs fails the stage: nothing is committed.
        try:
            check = verify_bundle(bundle, shipped.run, expected_sha256=sealed)
        except BundleError as e:
            raise BundleError(f"export {name} failed its bundle check, so nothing was committed: {e}") from None
        self.metrics["bundle_check"][name] = check.to_dict()
        meta = {"preprocessing": self.pre.with_(precision=precision).to_dict(), "precision": precision,
                "runtime": loaded.runtime, "model_file": model_file.name, "bundle_sha256": sealed}
        if precision == "int8" and self.int8_note:
            meta["not_deployable"] = self.int8_note
        self.outputs[name] = Artifact.of(self.ctx.out_dir, bundle, fmt, meta)
        log.info("  export %-15s top-1 %.2f%% in %s", name, self.metrics["top1"][name], loaded.runtime)


def run(ctx: Context) -> Result:
    import shutil

    from pipeline.data import load_splits
    from pipeline.measure.scoring import ValImages

    cfg, q = ctx.cfg, ctx.input("quantize")
    sources = {name: q.outputs[name].sha256 for name in ("onnx_fp32", "onnx_int8")}
    pre = q.outputs["onnx_fp32"].preprocessing
    val = ValImages(load_splits(cfg.data, cfg.run.seed).val)
    onnx_of = {"fp32": q.path_of("onnx_fp32"), "int8": q.path_of("onnx_int8")}
    ex = Exporter(ctx, pre, val, sources, onnx_of["fp32"], q.outputs["onnx_int8"].metadata.get("not_deployable"))
    from runtimes.progress import progress
    # quantize's files are bundled as they are; fp16 conversions start from the fp32 ONNX, int8
    # ones from the Q/DQ file.
    work = [functools.partial(ex.add, f"onnx_{p}", Format.onnx, path, p) for p, path in onnx_of.items()]
    work += [functools.partial(ex.convert, onnx_of["int8" if p == "int8" else "fp32"], fmt, p)
             for fmt, p in _requested(cfg)]
    for step in progress(work, desc="export", unit="artifacts", log=log):
        step()
    shutil.rmtree(ex.work, ignore_errors=True)
    ex.metrics["quantize"] = {"fp32_top1": q.metrics.get("fp32_top1"), "int8_top1": q.metrics.get("int8_top1")}
    ex.metrics["int8_across_runtimes"] = int8_across_runtimes(ex.predictions)
    ex.metrics["int8_vs_fp32"] = int8_vs_fp32(ex.predictions, np.asarray(val.targets))
    return Result(outputs=ex.outputs, metrics=ex.metrics)


def int8_across_runtimes(predictions: dict[str, np.ndarray]) -> dict | None:
    """How often each other runtime's INT8 artifact predicts what ONNX Runtime's INT8 file does on
    val, with the CPU's VNNI flag: a finding (without VNNI two correct runtimes round some near-ties
    differently), not a failure; parity is judged against FP32."""
    from runtimes.environment import cpu_has_vnni
    ref = predictions.get("onnx_int8")
    others = {n: p for n, p in predictions.items() if n.endswith("_int8") and n != "onnx_int8"}
    if ref is None or not others:
        return None
    return {"cpu_vnni": cpu_has_vnni(), "reference": "onnx_int8",
            "agreement": {n: float(np.mean(p == ref)) for n, p in others.items()}}


def int8_vs_fp32(predictions: dict[str, np.ndarray], targets: np.ndarray) -> dict:
    """Each INT8 artifact's val top-1 against the FP32 ONNX's, image by image, with its interval."""
    from pipeline.measure.accuracy_interval import paired_difference
    fp32 = predictions.get("onnx_fp32")
    if fp32 is None:
        return {}
    return {n: paired_difference(p == targets, fp32 == targets)
            for n, p in predictions.items() if n.endswith("_int8")}


STAGE = Stage(name="export", version=5, deps=("quantize",), params=params, run=run)
