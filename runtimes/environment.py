"""The machine and software a result was produced on: the one environment record.

`describe_environment` goes next to every latency number, `machine_fingerprint` joins the cache
key of machine-dependent stages, and `software_environment` goes into every stage manifest.
Everything here is best effort: a missing file, tool or library becomes None (or is left
out), never an exception, because a benchmark must not fail for lack of a thermal sensor.
"""
from __future__ import annotations

import copy
import glob
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

# x86 features that decide which kernels run (VNNI/AMX: int8 dot products; AVX-512: width),
# and their Arm counterparts (dot product, int8 matrix multiply, half precision).
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "amx_tile", "amx_int8", "amx_bf16",
                     "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve")
# Report name -> the distributions that provide it (the first one installed wins).
_PACKAGES = {
    "numpy": ("numpy",), "torch": ("torch",), "onnx": ("onnx",), "onnxruntime":
    ("onnxruntime", "onnxruntime-gpu"), "openvino": ("openvino",),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"),
    "timm": ("timm",), "nncf": ("nncf",), "torch-pruning": ("torch-pruning",),
}
# The libraries that change a latency number, and those that change what a stage produces.
RUNTIME_PACKAGES = ("numpy", "torch", "onnx", "onnxruntime", "openvino", "tensorrt")
PIPELINE_PACKAGES = ("torch", "timm", "onnx", "onnxruntime", "openvino", "nncf", "torch-pruning")
_NVIDIA_SMI_FIELDS = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.mem",
                      "clocks.max.sm", "temperature.gpu", "power.limit", "pstate")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpuinfo(text: str | None = None) -> dict[str, str]:
    """First processor's fields from /proc/cpuinfo, or from `text` in its format ("model name",
    "flags" / "Features", ...)."""
    fields: dict[str, str] = {}
    if text is None:
        text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """CPU feature flags of this machine, or of `cpuinfo` (text in /proc/cpuinfo's format);
    lower-case, empty where they cannot be read."""
    info = _cpuinfo(cpuinfo)
    return set((info.get("flags") or info.get("Features") or "").lower().split())


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """True on x86 CPUs with VNNI (AVX512-VNNI or AVX-VNNI) int8 dot-product instructions.

    Without VNNI, x86 int8 kernels multiply u8 activations by s8 weights with an instruction
    whose 16-bit intermediate sums can saturate, so quantization should then restrict weights
    to 7 bits (reduce_range). False on non-x86 CPUs, where the question does not arise.
    `cpuinfo`: /proc/cpuinfo's text of another machine (default: this one).
    """
    flags = cpu_flags(cpuinfo)
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _cpu_model(info: dict[str, str]) -> str | None:
    model = info.get("model name") or info.get("Model") or info.get("Hardware")
    if not model:
        # Arm boards (Jetson) name the board in the device tree rather than /proc/cpuinfo.
        model = (_read("/sys/firmware/devicetree/base/model") or "").rstrip("\x00") or None
    return model or platform.processor() or None


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:
        return None


def _cpu() -> dict:
    info = _cpuinfo()
    flags = cpu_flags()
    freq = None
    try:
        import psutil

        current = psutil.cpu_freq()
        freq = round(current.current, 1) if current else None
    except Exception:
        pass
    return {
        "model": _cpu_model(info),
        "architecture": platform.machine(),
        "flags": sorted(f for f in FLAGS_OF_INTEREST if f in flags),
        "vnni": cpu_has_vnni(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "frequency_mhz": freq,
        "scaling_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
    }


def package_versions(names: tuple[str, ...] = RUNTIME_PACKAGES) -> dict[str, str | None]:
    """Versions of the named libraries (default: numeric and inference), None for those not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        versions[name] = None
        for dist in _PACKAGES[name]:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    if "tensorrt" in versions and versions["tensorrt"] is None and Path("/etc/nv_tegra_release").exists():
        # JetPack installs TensorRT's Python bindings without package metadata.
        try:
            import tensorrt

            versions["tensorrt"] = tensorrt.__version__
        except Exception:
            pass
    return versions


def _gpus() -> list[dict]:
    """One dict per NVIDIA GPU as nvidia-smi reports it (empty without nvidia-smi)."""
    gpus: list[dict] = []
    query = _run(["nvidia-smi", f"--query-gpu={','.join(_NVIDIA_SMI_FIELDS)}",
                  "--format=csv,noheader,nounits"])
    for line in (query or "").splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) == len(_NVIDIA_SMI_FIELDS):
            gpus.append(dict(zip((f.replace(".", "_") for f in _NVIDIA_SMI_FIELDS), values)))
    return gpus


def _cuda() -> dict | None:
    """CUDA as torch sees it (also on a Jetson, where nvidia-smi may be missing); None without."""
    try:
        import torch
    except Exception:
        return None
    if not torch.cuda.is_available():
        return None
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append({"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                        "memory_mb": props.total_memory // 2**20})
    return {"runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "devices": devices}


def _thermal_c() -> dict[str, float]:
    temps: dict[str, float] = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        kind, raw = _read(f"{zone}/type"), _read(f"{zone}/temp")
        if kind and raw and raw.lstrip("-").isdigit():
            temps[f"{kind}:{Path(zone).name}"] = int(raw) / 1000.0
    return temps


def _jetson() -> dict | None:
    """L4T release, power mode and clocks of an NVIDIA Jetson; None on other machines."""
    release = _read("/etc/nv_tegra_release")
    if release is None:
        return None
    clocks: dict[str, int] = {}
    for path in sorted(glob.glob("/sys/class/devfreq/*/cur_freq")):
        value = _read(path)
        if value and value.isdigit():
            clocks[Path(path).parent.name] = int(value)
    for cpu_path in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")):
        value = _read(cpu_path)
        if value and value.isdigit():
            clocks[cpu_path.split("/")[5]] = int(value) * 1000  # kHz -> Hz like devfreq
    return {
        "l4t_release": release.splitlines()[0],
        "power_mode": _run(["nvpmodel", "-q"]),
        "clocks_hz": clocks,
    }


def describe_environment(threads: int | None = None) -> dict:
    """Everything that changes a latency number: CPU, cores, threads used, OS, library
    versions, GPUs, and on a Jetson the power mode and clocks. Never raises."""
    env: dict = {"threads": threads}
    for key, probe in (("cpu", _cpu), ("gpus", _gpus), ("cuda", _cuda), ("thermal_c", _thermal_c),
                       ("jetson", _jetson), ("packages", package_versions)):
        try:
            env[key] = probe()
        except Exception as exc:  # a probe bug must not cost a benchmark its result
            env[key] = {"error": f"{type(exc).__name__}: {exc}"}
    env["os"] = {"system": platform.system(), "release": platform.release(),
                 "version": platform.version(), "platform": platform.platform()}
    env["python"] = sys.version.split()[0]
    return env


def fingerprint(env: dict) -> dict:
    """The parts of `describe_environment()` that identify a machine and its software, without
    readings that drift between runs (clocks, temperatures): for cache keys of
    machine-dependent results such as TensorRT engines and latencies."""
    cpu = env.get("cpu") or {}
    jetson = env.get("jetson") or {}
    return {
        "cpu": {k: cpu.get(k) for k in ("model", "architecture", "flags", "logical_cores")},
        "gpus": [{k: g.get(k) for k in ("name", "driver_version")} for g in env.get("gpus") or []],
        "cuda": env.get("cuda"),
        "jetson": {k: jetson.get(k) for k in ("l4t_release", "power_mode")} if jetson else None,
        "packages": env.get("packages"),
        "os": {k: (env.get("os") or {}).get(k) for k in ("system", "release")},
        "python": env.get("python"),
        "threads": env.get("threads"),
    }


@lru_cache(maxsize=1)
def _machine_fingerprint() -> dict:
    # Probing runs nvidia-smi and imports torch: once per process is enough.
    return fingerprint(describe_environment())


def machine_fingerprint() -> dict:
    """`fingerprint(describe_environment())` of this machine, probed once per process (a fresh
    copy each call): the cache-key part of machine-dependent stages."""
    return copy.deepcopy(_machine_fingerprint())


def software_environment() -> dict:
    """The light record every stage manifest carries: Python, platform and pipeline library versions."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "packages": package_versions(PIPELINE_PACKAGES)}
