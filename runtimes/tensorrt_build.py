"""Building TensorRT engines from ONNX with TensorRT's Python API, and caching them by content.

An engine only loads with the TensorRT version and the GPU (compute capability) that built it, and
on a Jetson with the L4T release, so all of them join the ONNX content hash and the builder flags
in the cache key. The code lives in runtimes/ because engines are built on the device that runs
them and the device carries only runtimes/; exporters/tensorrt_export.py builds with the same
functions. Cached engines and the timing cache carry their content hash beside them
(runtimes.hash_record) and are rebuilt, with a warning, when they do not match it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

from runtimes import errors, hash_record
from runtimes.precision import Precision

# Bump when the way engines are built changes, so cached engines built the old way are not reused.
BUILD_RECIPE = 1
# CUdevice_attribute values of the CUDA driver API (cuda.h): compute capability major / minor.
_CC_MAJOR, _CC_MINOR = 75, 76

log = logging.getLogger(__name__)


class EngineBuildError(RuntimeError, errors.StageFailed):
    """TensorRT could not parse the ONNX or build an engine from it."""


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str,
                     compute_capability: Union[Tuple[int, int], str], precision: Union[Precision, str],
                     options: dict, l4t_release: Optional[str] = None) -> str:
    """Content key of an engine: same ONNX, TensorRT, GPU, L4T release, precision and builder
    options give the same key (`l4t_release` None off a Jetson)."""
    if isinstance(compute_capability, (tuple, list)):
        compute_capability = ".".join(str(int(c)) for c in compute_capability)
    payload = {"onnx": onnx_sha256, "tensorrt": str(trt_version), "gpu": gpu_name,
               "compute_capability": str(compute_capability),
               "precision": Precision.parse(precision).value, "options": options}
    if l4t_release:
        payload["l4t_release"] = l4t_release
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def cached_engine(cache_dir: Optional[Path], key: str) -> Optional[Path]:
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
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
    try:
        shutil.copyfile(engine, tmp / f"{key}.engine")
        (tmp / f"{key}.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        hash_record.publish(tmp / f"{key}.json", cache_dir / f"{key}.json")
        return hash_record.publish(tmp / f"{key}.engine", cache_dir / f"{key}.engine")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def materialize_engine(staged: Path, cache_dir: Optional[Path], key: str,
                       build: Callable[[Path], None], info: dict) -> bool:
    """Write the engine for `key` to `staged`: from the cache if present (True), else by `build` (False)."""
    hit = cached_engine(cache_dir, key)
    if hit is not None:
        shutil.copyfile(hit, staged)
        return True
    build(staged)
    if not staged.is_file() or staged.stat().st_size == 0:
        raise EngineBuildError(f"TensorRT build wrote no engine to {staged}")
    if cache_dir is not None:
        store_engine(cache_dir, key, staged, info)
    return False


def build_engine(onnx_path: Path, engine_path: Path, precision: Union[Precision, str],
                 optimization_level: int = 3, workspace_mb: int = 1024,
                 timing_cache: Optional[Path] = None, opt_batch: int = 1, max_batch: int = 32) -> None:
    """Build an engine from `onnx_path` into `engine_path` with the TensorRT Python API.

    fp32 and int8 (Q/DQ) build strongly typed networks, as TensorRT's explicit-quantization guide
    asks (fp32 without TF32); fp16 sets the FP16 builder flag. A dynamic batch axis gets one
    optimisation profile: 1 .. `max_batch`, tuned for `opt_batch`. The timing cache at
    `timing_cache` (when given) is read if its hash record matches and written back afterwards.
    """
    import tensorrt as trt

    precision = Precision.parse(precision)
    if precision is Precision.FP16 and not hasattr(trt.BuilderFlag, "FP16"):
        raise EngineBuildError(f"TensorRT {trt.__version__} builds strongly typed networks only: an fp16 "
                               "engine needs an fp16 ONNX; export fp32 or int8 (Q/DQ) instead")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if precision is Precision.FP16 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {Path(onnx_path).name}: {problems}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.builder_optimization_level = int(optimization_level)
    if precision is Precision.FP16:
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision is Precision.FP32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    _add_batch_profile(builder, network, config, opt_batch, max_batch)
    cache = _attach_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {Path(onnx_path).name} "
                               "(see the TensorRT log above)")
    Path(engine_path).write_bytes(bytes(serialized))
    if cache is not None and timing_cache:
        save_timing_cache(Path(timing_cache), bytes(cache.serialize()))


def _add_batch_profile(builder, network, config, opt_batch: int, max_batch: int) -> None:
    """Dynamic-batch inputs need an optimization profile: batch 1 .. max, tuned for opt."""
    profile, dynamic = builder.create_optimization_profile(), False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if dims and dims[0] < 0:
            rest, dynamic = tuple(dims[1:]), True
            profile.set_shape(tensor.name, (1,) + rest, (opt_batch,) + rest, (max(max_batch, opt_batch),) + rest)
    if dynamic:
        config.add_optimization_profile(profile)


def trusted_timing_cache(path: Union[Path, str]) -> bytes:
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


def save_timing_cache(path: Path, blob: bytes) -> None:
    """Write the timing cache atomically with its hash record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=path.parent))
    try:
        (tmp / path.name).write_bytes(blob)
        hash_record.publish(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _attach_timing_cache(config, path: Optional[Path]):
    """Load the timing cache file (or start an empty one) so layer timings carry over between builds."""
    if path is None:
        return None
    cache = config.create_timing_cache(trusted_timing_cache(path))
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s was made on another GPU or TensorRT version; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def gpu_target(index: int = 0) -> dict:
    """TensorRT version, GPU name and compute capability of CUDA device `index`: from torch when
    it is installed, else from the CUDA driver (libcuda) directly, as on a Jetson without torch.
    Raises EngineBuildError when neither can name the GPU."""
    import tensorrt as trt

    found = _torch_gpu(index) or _driver_gpu(index)
    if found is None:
        raise EngineBuildError("no CUDA GPU found (neither torch nor the CUDA driver libcuda.so.1 "
                               "reports one): TensorRT engines are built on the GPU that runs them")
    name, capability = found
    return {"tensorrt": trt.__version__, "gpu": name, "compute_capability": capability}


def _torch_gpu(index: int) -> Optional[Tuple[str, str]]:
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        return (torch.cuda.get_device_name(index),
                ".".join(map(str, torch.cuda.get_device_capability(index))))
    except Exception:
        return None


def _driver_gpu(index: int) -> Optional[Tuple[str, str]]:
    """Name and compute capability from the CUDA driver API through ctypes (no Python binding)."""
    import ctypes

    for soname in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(soname)
            break
        except OSError:
            continue
    else:
        return None
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    if (lib.cuInit(0) != 0 or lib.cuDeviceGet(ctypes.byref(device), index) != 0
            or lib.cuDeviceGetName(name, len(name), device) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device) != 0):
        return None
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


def build_on_device(onnx_path: Path, onnx_sha256: str, precision: Union[Precision, str], out_path: Path,
                    settings: dict, opt_batch: int, max_batch: int, dynamic: bool) -> dict:
    """Build (or take from the cache) the engine of a bundle's ONNX into `out_path`, on this
    device's GPU. `settings`: the request's "tensorrt" block (engine_cache, timing_cache,
    optimization_level, workspace_mb; relative paths from the working folder). Returns the build
    record: cache "hit" or "miss", seconds, key and what the key was made of."""
    from runtimes.telemetry import l4t_release

    level, workspace = int(settings.get("optimization_level", 3)), int(settings.get("workspace_mb", 1024))
    cache_dir = Path(settings["engine_cache"]) if settings.get("engine_cache") else None
    timing = Path(settings["timing_cache"]) if settings.get("timing_cache") else None
    # The same fields, in the same shape, as exporters.tensorrt_export.cache_options.
    options = {"recipe": BUILD_RECIPE, "optimization_level": level, "workspace_mb": workspace,
               "dynamic_batch": dynamic, "batch_size": opt_batch, "max_batch_size": max_batch if dynamic else None}
    target = gpu_target()
    target["l4t_release"] = l4t_release()
    key = engine_cache_key(onnx_sha256, target["tensorrt"], target["gpu"], target["compute_capability"],
                           precision, options, target["l4t_release"])
    info = dict(target, key=key, source=Path(onnx_path).name, precision=Precision.parse(precision).value,
                options=options)
    start = time.perf_counter()
    hit = materialize_engine(out_path, cache_dir, key, lambda p: build_engine(
        onnx_path, p, precision, level, workspace, timing, opt_batch, max_batch), info)
    return dict(info, cache="hit" if hit else "miss", seconds=round(time.perf_counter() - start, 3))
