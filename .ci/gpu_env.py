"""What this machine offers the GPU check: GPUs, driver, torch and its CUDA, or why no CUDA device.

Run as its own process (`python3 .ci/gpu_env.py` prints one JSON object) so that a driver that
hangs while CUDA starts stops this probe at its timeout, not the whole check.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def nvidia_smi(timeout: float = 20) -> list[dict]:
    """One dict per GPU as nvidia-smi reports it (name, driver, memory); [] without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return []
    out = []
    for line in done.stdout.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 4:
            out.append(dict(zip(("name", "driver", "memory", "max_sm_clock"), fields)))
    return out


def driver_from_proc() -> str | None:
    """The kernel module's version line, where nvidia-smi is missing."""
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def probe() -> dict:
    """The environment record; `reason` is None exactly when torch can use a CUDA device."""
    sys.path.insert(0, str(ROOT))
    from runtimes.cuda_staging import cuda_unavailable_reason
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "reason": cuda_unavailable_reason("cuda")}
    try:
        import torch
    except Exception:  # the reason above already says torch cannot be imported
        return env
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if env["reason"] is None:
        gpus = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                         "memory_gib": round(p.total_memory / 2**30, 1),
                         "multiprocessors": p.multi_processor_count})
        env["gpus"] = gpus
    smi = nvidia_smi()
    env["nvidia_smi"] = smi
    env["driver"] = smi[0]["driver"] if smi else driver_from_proc()
    return env


if __name__ == "__main__":
    print(json.dumps(probe()))
