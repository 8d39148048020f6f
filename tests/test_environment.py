"""The environment record: complete on this machine, and never raising where files are missing."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
from pathlib import Path

import pytest

from runtimes import environment
from runtimes.environment import cpu_has_vnni, describe_environment, fingerprint

TOP_KEYS = {"threads", "cpu", "gpus", "cuda", "thermal_c", "jetson", "packages", "os", "python"}


def _proc_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def test_describe_environment_on_this_machine():
    env = describe_environment(threads=2)
    assert set(env) == TOP_KEYS
    assert env["threads"] == 2
    cpu = env["cpu"]
    assert cpu["logical_cores"] == os.cpu_count()
    assert cpu["architecture"] == platform.machine()
    assert isinstance(cpu["physical_cores"], int) and 1 <= cpu["physical_cores"] <= os.cpu_count()
    assert env["python"] == platform.python_version()
    assert env["os"]["system"] == platform.system()
    assert env["packages"]["numpy"] == importlib.metadata.version("numpy")
    assert env["packages"]["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert set(env["packages"]) == {"numpy", "torch", "onnx", "onnxruntime", "openvino", "tensorrt"}
    if importlib.util.find_spec("tensorrt") is None:
        assert env["packages"]["tensorrt"] is None
    json.dumps(env)  # goes into manifests as is


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo on this OS")
def test_cpu_model_and_flags_match_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    env = describe_environment()
    flags = _proc_flags()
    assert env["cpu"]["flags"] == sorted(f for f in environment.FLAGS_OF_INTEREST if f in flags)
    assert cpu_has_vnni() == bool({"avx512_vnni", "avx_vnni"} & flags)
    assert env["cpu"]["vnni"] == cpu_has_vnni()
    if "model name" in text:
        assert f": {env['cpu']['model']}" in text


def test_missing_files_and_tools_give_none_not_errors(monkeypatch):
    monkeypatch.setattr(environment, "_read", lambda path: None)
    monkeypatch.setattr(environment.shutil, "which", lambda name: None)
    env = describe_environment()
    assert set(env) == TOP_KEYS
    assert env["cpu"]["flags"] == [] and env["cpu"]["vnni"] is False
    assert env["cpu"]["scaling_governor"] is None
    assert env["gpus"] == [] and env["jetson"] is None and env["thermal_c"] == {}
    assert cpu_has_vnni() is False


def test_a_failing_probe_is_recorded_not_raised(monkeypatch):
    def broken():
        raise OSError("sensor unplugged")

    monkeypatch.setattr(environment, "_thermal_c", broken)
    env = describe_environment()
    assert env["thermal_c"] == {"error": "OSError: sensor unplugged"}
    assert env["packages"]["numpy"]


def test_jetson_block_from_tegra_release(monkeypatch):
    real_read = environment._read
    release = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64"

    def read(path):
        return release if path == "/etc/nv_tegra_release" else real_read(path)

    monkeypatch.setattr(environment, "_read", read)
    monkeypatch.setattr(environment.shutil, "which", lambda name: None)  # no nvpmodel here
    jetson = describe_environment()["jetson"]
    assert jetson["l4t_release"] == release
    assert jetson["power_mode"] is None
    assert isinstance(jetson["clocks_hz"], dict)


def test_fingerprint_drops_drifting_readings():
    env = describe_environment(threads=4)
    fp = fingerprint(env)
    assert fp["threads"] == 4 and fp["python"] == env["python"]
    assert "frequency_mhz" not in fp["cpu"] and "thermal_c" not in fp
    assert fp["packages"] == env["packages"]
    assert fingerprint(describe_environment(threads=4)) == fp  # stable between calls
