"""What a target offers, printed as one JSON line; sent to the target's Python on stdin and run there.

Standard library only, Python 3.6+ syntax (a Jetson's system Python can be 3.6 or 3.8): the remote
side has nothing of edgeship yet when this runs. Arguments: the runtimes to look for.
"""
import json
import os
import platform
import subprocess
import sys

RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip().strip("\x00") or None
    except OSError:
        return None


def _cmd(argv):
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
        return out.stdout.decode(errors="replace").strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model():
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model"):
            return value.strip()
    return platform.processor() or None


def _module(name):
    try:
        module = __import__(name)
    except Exception as exc:  # a broken install is reported, not raised
        return {"version": None, "error": "%s: %s" % (type(exc).__name__, exc)}
    version = getattr(module, "__version__", None)
    if version is None and name == "openvino":
        try:
            from openvino import get_version
            version = get_version()
        except Exception:
            pass
    info = {"version": version, "error": None}
    if name == "onnxruntime":
        try:
            info["providers"] = module.get_available_providers()
        except Exception:
            pass
    return info


def main():
    wanted = sys.argv[1:]
    power = _cmd(["nvpmodel", "-q"])
    facts = {
        "python": platform.python_version(), "executable": sys.executable,
        "machine": platform.machine(), "system": platform.system(), "release": platform.release(),
        "cpu_model": _cpu_model(), "cores": os.cpu_count(),
        "board": _read("/proc/device-tree/model"),
        "l4t_release": (_read("/etc/nv_tegra_release") or "").split(",")[0] or None,
        "power_mode": " ".join(power.split()) if power else None,
        "gpus": _cmd(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]),
        "numpy": _module("numpy"),
        "runtimes": {name: _module(RUNTIME_MODULES.get(name, name)) for name in wanted},
    }
    sys.stdout.write(json.dumps(facts) + "\n")


if __name__ == "__main__":
    main()
