"""ONNX → TensorRT engine, built on the GPU that will run it and cached by (model, TensorRT, GPU).

An engine is specific to the TensorRT version and the GPU (compute capability) it was built on,
so the cache key holds both next to the ONNX content hash and the build options. Precision:
fp32 and int8 (Q/DQ ONNX, explicit quantization) build strongly typed networks, as TensorRT's
explicit-quantization guide asks; fp16 uses the FP16 builder flag where the installed TensorRT
still has it (10.x). With `spec.use_trtexec` and `trtexec` on PATH (a Jetson), trtexec builds.
Cached engines and the timing cache carry the hash of their content beside them
(`runtimes.hash_record`) and are rebuilt, with a warning, when they do not match it.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np

from calibration import hash_record
from calibration.hashing import sha256_file
from exporters.onnx_export import check_preprocessing_matches, parity_against_onnx
from exporters.spec import ExportError, ExportSpec, ExportUnavailable, Precision, publish, staging_dir
from runtimes import tensorrt_build
from runtimes.execution import open_model
from runtimes.telemetry import l4t_release
# Key, cache and build live in runtimes/ because devices build engines too; one copy.
from runtimes.tensorrt_build import (BUILD_RECIPE, EngineBuildError, cached_engine,  # noqa: F401
                                     engine_cache_key, store_engine, trusted_timing_cache)

INSTALL_HINT = ("TensorRT is not installed: pip install 'edgeship[tensorrt]' on a machine with an "
                "NVIDIA GPU, or use JetPack's TensorRT on a Jetson")

log = logging.getLogger(__name__)


def unavailable() -> str | None:
    """Why a TensorRT engine cannot be built here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        return f"{INSTALL_HINT} (import tensorrt failed: {err})"
    try:
        import torch
    except ImportError:
        return "torch is not installed: the TensorRT exporter uses torch to find the CUDA GPU and hold buffers"
    if not torch.cuda.is_available():
        return ("no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT engines are built "
                "on the GPU that runs them; run the export on the target machine")
    return None


def cache_options(spec: ExportSpec) -> dict:
    """The spec fields that change the built engine (and so belong in its cache key)."""
    return {"recipe": BUILD_RECIPE, "optimization_level": spec.optimization_level,
            "workspace_mb": spec.workspace_mb, "dynamic_batch": spec.dynamic_batch,
            "batch_size": spec.batch_size,
            "max_batch_size": spec.max_batch_size if spec.dynamic_batch else None}


def trtexec_command(onnx: Path, engine: Path, spec: ExportSpec, input_name: str = "input") -> list[str]:
    """The trtexec command line that builds the same engine as the Python API path."""
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", "--skipInference",
           f"--builderOptimizationLevel={spec.optimization_level}",
           f"--memPoolSize=workspace:{spec.workspace_mb}M"]
    if spec.precision is Precision.FP16:
        cmd.append("--fp16")
    else:
        cmd.append("--stronglyTyped")  # types come from the graph: fp32, or Q/DQ for int8
        if spec.precision is Precision.FP32:
            cmd.append("--noTF32")      # TF32 rounds to 10-bit mantissas; fp32 must stay fp32
    if spec.timing_cache:
        cmd.append(f"--timingCacheFile={spec.timing_cache}")
    if spec.dynamic_batch:
        chw = "x".join(str(d) for d in spec.preprocessing.input_shape(1)[1:])
        for flag, n in (("min", 1), ("opt", spec.batch_size), ("max", spec.max_batch_size)):
            cmd.append(f"--{flag}Shapes={input_name}:{n}x{chw}")
    return cmd


def export_onnx_to_tensorrt(src: Path, out_dir: Path, spec: ExportSpec) -> Path:
    """Build (or fetch from the cache) `<out_dir>/<stem>.engine` and check it against the ONNX."""
    reason = unavailable()
    if reason:
        raise ExportUnavailable(reason)
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_file():
        raise FileNotFoundError(f"onnx→tensorrt source {src} does not exist")
    check_preprocessing_matches(src, spec)
    if spec.precision is Precision.INT8:
        check_qdq_for_tensorrt(src)
    if spec.precision is Precision.FP16 and not spec.use_trtexec:
        import tensorrt as trt
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ExportUnavailable(f"TensorRT {trt.__version__} builds strongly typed networks only: an fp16 "
                                    "engine needs an fp16 ONNX; export fp32 or int8 (Q/DQ) instead")
    target = _target()
    key = engine_cache_key(sha256_file(src), target["tensorrt"], target["gpu"], target["compute_capability"],
                           spec.precision, cache_options(spec), target["l4t_release"])
    info = {**target, "key": key, "source": src.name, "precision": spec.precision.value,
            "options": cache_options(spec)}
    use_trtexec = spec.use_trtexec and shutil.which("trtexec") is not None
    final = out_dir / f"{src.stem}.engine"
    with staging_dir(out_dir) as tmp:
        staged = tmp / final.name
        builder = _build_with_trtexec if use_trtexec else _build_with_api
        hit = materialize_engine(staged, spec.engine_cache, key, lambda p: builder(src, p, spec), info)
        result = parity_against_onnx(src, open_model(staged, "tensorrt").run, spec, final)
        log.info("tensorrt export %s (cache %s): %s", final, "hit" if hit else "miss", result.describe())
        sidecar = tmp / f"{src.stem}.json"
        sidecar.write_text(json.dumps({**info, "cache_hit": hit, "builder": "trtexec" if use_trtexec else "api",
                                       "preprocessing": spec.tagged_preprocessing().to_dict(),
                                       "parity": result.to_dict()}, indent=2, sort_keys=True))
        publish(sidecar, final.with_suffix(".json"))
        return publish(staged, final)


def check_qdq_for_tensorrt(onnx_path: Path) -> None:
    """Refuse Q/DQ nodes TensorRT cannot build, before a long build fails on them.

    TensorRT's ONNX parser dequantizes int8 (and fp8/int4) with a zero point of 0 only: uint8,
    asymmetric activations and int32-quantized biases are rejected.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    consts = {t.name: t for t in graph.initializer}
    consts.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                   if a.name == "value"})
    bad = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in consts:
            zero_point = numpy_helper.to_array(consts[node.input[2]])
            if zero_point.dtype != np.int8 or np.any(zero_point != 0):
                bad.append(f"{node.name or node.op_type} ({zero_point.dtype}, zero point {zero_point.ravel()[:3]})")
    if bad:
        raise ExportError(f"{onnx_path.name} has Q/DQ nodes that TensorRT cannot build (it needs int8 with zero "
                          f"point 0): {', '.join(bad[:4])}{' …' if len(bad) > 4 else ''}; quantize with symmetric "
                          "int8 activations and weights and unquantized biases (QuantizeBias=False) for TensorRT")


def _build_with_trtexec(onnx_path: Path, engine_path: Path, spec: ExportSpec) -> None:
    import onnx

    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    cmd = trtexec_command(onnx_path, engine_path, spec, input_name)
    if spec.timing_cache:      # trtexec reads the file itself: a damaged one must not reach it
        Path(spec.timing_cache).parent.mkdir(parents=True, exist_ok=True)
        trusted_timing_cache(spec.timing_cache)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExportError(f"trtexec exited with {proc.returncode} building {onnx_path.name}: "
                          f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if spec.timing_cache and Path(spec.timing_cache).is_file():
        hash_record.write_record(spec.timing_cache)


def materialize_engine(staged: Path, cache_dir: Path | None, key: str,
                       build: Callable[[Path], None], info: dict) -> bool:
    """Write the engine for `key` to `staged`: from the cache if present (True), else by `build` (False)."""
    try:
        return tensorrt_build.materialize_engine(staged, cache_dir, key, build, info)
    except EngineBuildError as err:
        raise ExportError(str(err)) from None


def _build_with_api(onnx_path: Path, engine_path: Path, spec: ExportSpec) -> None:
    try:
        tensorrt_build.build_engine(onnx_path, engine_path, spec.precision, spec.optimization_level,
                                    spec.workspace_mb, spec.timing_cache, spec.batch_size, spec.max_batch_size)
    except EngineBuildError as err:
        raise ExportError(str(err)) from None


def _target() -> dict:
    target = tensorrt_build.gpu_target(_torch_device_index())
    target["l4t_release"] = l4t_release()
    return target


def _torch_device_index() -> int:
    import torch

    return torch.cuda.current_device()
