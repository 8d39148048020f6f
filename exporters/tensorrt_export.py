"""ONNX → TensorRT engine, built on the GPU that will run it and cached by (model, TensorRT, GPU).

An engine is specific to the TensorRT version and the GPU (compute capability) it was built on,
so the cache key holds both next to the ONNX content hash and the build options. Precision:
fp32 and int8 (Q/DQ ONNX, explicit quantization) build strongly typed networks, as TensorRT's
explicit-quantization guide asks; fp16 uses the FP16 builder flag where the installed TensorRT
still has it (10.x). With `spec.use_trtexec` and `trtexec` on PATH (a Jetson), trtexec builds.
Cached engines and the timing cache carry the hash of their content beside them
(`calibration.hash_record`) and are rebuilt, with a warning, when they do not match it.
"""
from __future__ import annotations

import hashlib
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
from runtimes.execution import open_model

# Bump when the way engines are built changes, so cached engines built the old way are not reused.
BUILD_RECIPE = 1
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


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int] | str, precision: Precision | str,
                     options: dict) -> str:
    """Content key of an engine: same ONNX, TensorRT, GPU, precision and options give the same key."""
    if isinstance(compute_capability, (tuple, list)):
        compute_capability = ".".join(str(int(c)) for c in compute_capability)
    payload = {"onnx": onnx_sha256, "tensorrt": str(trt_version), "gpu": gpu_name,
               "compute_capability": str(compute_capability),
               "precision": Precision.parse(precision).value, "options": options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


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


def cached_engine(cache_dir: Path | None, key: str) -> Path | None:
    """The cached engine for `key` once its content matches its hash record, or None (a damaged
    one is removed, with a warning, so it is rebuilt)."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{key}.engine"
    if not path.is_file():
        return None
    why = hash_record.problem(path)
    if why is None and path.stat().st_size > 0:
        return path
    log.warning("tensorrt engine cache %s: %s; rebuilding the engine", path, why or "empty (damaged)")
    hash_record.discard(path)
    return None


def store_engine(cache_dir: Path, key: str, engine: Path, info: dict) -> Path:
    """Copy a built engine into the cache (atomically, its hash recorded beside it), with a JSON
    note of what it was built from."""
    cache_dir = Path(cache_dir)
    with staging_dir(cache_dir) as tmp:
        shutil.copyfile(engine, tmp / f"{key}.engine")
        (tmp / f"{key}.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        hash_record.publish(tmp / f"{key}.json", cache_dir / f"{key}.json")
        return hash_record.publish(tmp / f"{key}.engine", cache_dir / f"{key}.engine")


def materialize_engine(staged: Path, cache_dir: Path | None, key: str,
                       build: Callable[[Path], None], info: dict) -> bool:
    """Write the engine for `key` to `staged`: from the cache if present (True), else by `build` (False)."""
    hit = cached_engine(cache_dir, key)
    if hit is not None:
        shutil.copyfile(hit, staged)
        return True
    build(staged)
    if not staged.is_file() or staged.stat().st_size == 0:
        raise ExportError(f"TensorRT build wrote no engine to {staged}")
    if cache_dir is not None:
        store_engine(cache_dir, key, staged, info)
    return False


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
                           spec.precision, cache_options(spec))
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


def _build_with_api(onnx_path: Path, engine_path: Path, spec: ExportSpec) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if spec.precision is Precision.FP16 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)
    config.builder_optimization_level = spec.optimization_level
    if spec.precision is Precision.FP16:
        config.set_flag(trt.BuilderFlag.FP16)
    elif spec.precision is Precision.FP32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    _add_batch_profile(builder, network, config, spec)
    cache = _attach_timing_cache(config, spec.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    engine_path.write_bytes(bytes(serialized))
    if cache is not None and spec.timing_cache:
        timing_cache = Path(spec.timing_cache)
        with staging_dir(timing_cache.parent) as tmp:
            (tmp / timing_cache.name).write_bytes(bytes(cache.serialize()))
            hash_record.publish(tmp / timing_cache.name, timing_cache)


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


def _add_batch_profile(builder, network, config, spec: ExportSpec) -> None:
    """Dynamic-batch inputs need an optimization profile: batch 1 .. max, tuned for spec.batch_size."""
    profile, dynamic = builder.create_optimization_profile(), False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if dims and dims[0] < 0:
            rest, dynamic = dims[1:], True
            profile.set_shape(tensor.name, (1, *rest), (spec.batch_size, *rest), (spec.max_batch_size, *rest))
    if dynamic:
        config.add_optimization_profile(profile)


def trusted_timing_cache(path: Path | str) -> bytes:
    """The timing cache's bytes once they match their hash record; b"" (a new cache) when the file
    is absent, and for a damaged one, which is removed with a warning."""
    path = Path(path)
    if not path.is_file():
        return b""
    why = hash_record.problem(path)
    if why is None:
        return path.read_bytes()
    log.warning("tensorrt timing cache %s: %s; starting a new one", path, why)
    hash_record.discard(path)
    return b""


def _attach_timing_cache(config, path: Path | None):
    """Load the timing cache file (or start an empty one) so layer timings carry over between builds."""
    if path is None:
        return None
    blob = trusted_timing_cache(path)
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s was made on another GPU or TensorRT version; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _target() -> dict:
    import tensorrt as trt
    import torch

    device = torch.cuda.current_device()
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(device),
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(device)))}

