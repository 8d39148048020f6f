"""Power, clocks and temperatures while a model runs, read on the device with the standard library.

On a Jetson, `tegrastats --interval 100` prints one line per tick; the line's layout changed
between JetPack generations and every one is read here:

    JetPack 4 (Nano, TX2):  ... GR3D_FREQ 0%@921 PLL@21C CPU@25C GPU@23.5C POM_5V_IN 2545/2547 POM_5V_GPU 0/0
    JetPack 4 (AGX Xavier): ... GPU 0/0 CPU 155/155 SOC 1243/1243 CV 0/0 VDDRQ 310/310 SYS5V 1946/1946
    JetPack 5/6 (Orin):     ... EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] cpu@41.5C VDD_IN 5001mW/5001mW VDD_SOC 1515mW/1515mW

A rail reads `NAME current/average`, in milliwatts with or without the unit. The board's input
(VDD_IN, POM_5V_IN) is what energy is computed from; where no input rail exists (AGX Xavier on
JetPack 4) the rails are summed. Elsewhere the same sampler reads cpufreq and thermal zones from
sysfs, so any Linux target gets clocks, temperatures and the throttling flag (but no power).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
# Sensors that report a constant or a placeholder rather than a temperature (the Nano's PMIC
# reads 100C always; absent sensors read -256C).
_IGNORED_TEMPS = ("PMIC",)
DEFAULT_THROTTLE_C = 85.0
CLOCK_DROP = 0.85          # a clock below 85% of its opening value counts as dropped ...
DROP_SAMPLES = 2           # ... when it stays there for this many consecutive samples
_BASELINE_SAMPLES = 3

_RAIL = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_TEMP = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_-]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
_GR3D = re.compile(r"GR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"EMC_FREQ (\d+)%(?:@(\d+))?")
_CPU = re.compile(r"CPU \[([^\]]*)\](?:@(\d+))?")


@dataclass
class Sample:
    """One reading: seconds on the monotonic clock, rail powers (mW), temperatures (C), clocks (MHz)."""

    t: float
    power_mw: Dict[str, float] = field(default_factory=dict)
    temps_c: Dict[str, float] = field(default_factory=dict)
    gpu_mhz: Optional[float] = None
    cpu_mhz: Optional[float] = None
    emc_mhz: Optional[float] = None

    def input_power_mw(self) -> Optional[float]:
        """The board's input power: the input rail, else the sum of all rails, else None."""
        for rail in INPUT_RAILS:
            if rail in self.power_mw:
                return self.power_mw[rail]
        return sum(self.power_mw.values()) if self.power_mw else None


def parse_tegrastats(line: str, t: float = 0.0) -> Optional[Sample]:
    """A Sample from one tegrastats line of any JetPack generation, or None for a line without
    any reading (a banner, an empty line)."""
    sample = Sample(t)
    for name, current, _average in _RAIL.findall(line):
        if name not in ("RAM", "SWAP", "IRAM"):
            sample.power_mw[name] = float(current)
    for name, value in _TEMP.findall(line):
        if float(value) > -40 and not name.upper().startswith(_IGNORED_TEMPS):
            sample.temps_c[name] = float(value)
    gr3d = _GR3D.search(line)
    if gr3d and gr3d.group(2):
        sample.gpu_mhz = max(float(v) for v in gr3d.group(2).split(",") if v)
    emc = _EMC.search(line)
    if emc and emc.group(2):
        sample.emc_mhz = float(emc.group(2))
    cpu = _CPU.search(line)
    if cpu:
        freqs = [float(core.split("@")[1]) for core in cpu.group(1).split(",") if "@" in core]
        if cpu.group(2):                          # older layout: [X%,Y%]@MHz
            freqs.append(float(cpu.group(2)))
        sample.cpu_mhz = max(freqs) if freqs else None
    empty = not (sample.power_mw or sample.temps_c or sample.gpu_mhz or sample.cpu_mhz or sample.emc_mhz)
    return None if empty else sample


def sysfs_sample(t: float, root: str = "/sys") -> Optional[Sample]:
    """CPU clock (fastest core) and thermal zones from sysfs, for targets without tegrastats."""
    sample = Sample(t)
    freqs = [_read_int(p) for p in glob.glob(f"{root}/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")]
    freqs = [f for f in freqs if f]
    if freqs:
        sample.cpu_mhz = max(freqs) / 1000.0        # kHz
    for zone in sorted(glob.glob(f"{root}/class/thermal/thermal_zone*")):
        kind, milli = _read_text(f"{zone}/type"), _read_int(f"{zone}/temp")
        if kind and milli is not None and milli > -40000:
            sample.temps_c[f"{kind}:{Path(zone).name}"] = milli / 1000.0
    return sample if (sample.cpu_mhz or sample.temps_c) else None


def throttle_threshold_c(root: str = "/sys") -> float:
    """The lowest 'passive' trip point of the thermal zones (where the kernel starts slowing the
    chip down), else DEFAULT_THROTTLE_C."""
    trips = []
    for kind_path in glob.glob(f"{root}/class/thermal/thermal_zone*/trip_point_*_type"):
        if _read_text(kind_path) == "passive":
            milli = _read_int(kind_path[:-len("type")] + "temp")
            if milli and milli > 0:
                trips.append(milli / 1000.0)
    return min(trips) if trips else DEFAULT_THROTTLE_C


def throttling(samples: List[Sample], temp_limit_c: float = DEFAULT_THROTTLE_C) -> Optional[str]:
    """Why the run looks throttled (a clock that fell below CLOCK_DROP of its opening value for
    DROP_SAMPLES consecutive samples, or a temperature at or above `temp_limit_c`), "" when it
    does not, None without samples."""
    if not samples:
        return None
    for clock in ("gpu_mhz", "cpu_mhz"):
        values = [getattr(s, clock) for s in samples if getattr(s, clock)]
        if len(values) <= _BASELINE_SAMPLES:
            continue
        opening = sorted(values[:_BASELINE_SAMPLES])[_BASELINE_SAMPLES // 2]
        run = 0
        for value in values[_BASELINE_SAMPLES:]:
            run = run + 1 if value < CLOCK_DROP * opening else 0
            if run >= DROP_SAMPLES:
                return f"{clock[:3].upper()} clock fell to {value:g} MHz from {opening:g} MHz"
    for s in samples:
        for name, temp in s.temps_c.items():
            if temp >= temp_limit_c:
                return f"{name} reached {temp:g} C (throttle threshold {temp_limit_c:g} C)"
    return ""


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def summarize(idle: List[Sample], run: List[Sample], run_seconds: float, inferences: int,
              temp_limit_c: float = DEFAULT_THROTTLE_C) -> dict:
    """Energy and throttling of one timed run from the samples taken while idle just before it
    and while it ran.

    energy per inference (mJ) = (mean input power during the run - idle power) x run seconds /
    inferences: the energy the inferences added over the board's idle draw.
    """
    idle_mw = _mean([p for p in (s.input_power_mw() for s in idle) if p is not None])
    run_mw = _mean([p for p in (s.input_power_mw() for s in run) if p is not None])
    energy = None
    if idle_mw is not None and run_mw is not None and inferences > 0 and run_seconds > 0:
        energy = (run_mw - idle_mw) / 1000.0 * run_seconds / inferences * 1000.0
    why = throttling(run, temp_limit_c)
    rails = sorted({name for s in run for name in s.power_mw})
    temps = sorted({name for s in run for name in s.temps_c})
    summary = {
        "samples": len(run), "idle_samples": len(idle),
        "rails_mean_mw": {r: _mean([s.power_mw[r] for s in run if r in s.power_mw]) for r in rails},
        "temps_max_c": {n: max(s.temps_c[n] for s in run if n in s.temps_c) for n in temps},
        "temp_limit_c": temp_limit_c,
        "throttle_reason": why or None,
    }
    for clock in ("gpu_mhz", "cpu_mhz", "emc_mhz"):
        values = [getattr(s, clock) for s in run if getattr(s, clock)]
        summary[clock] = {"first": values[0], "min": min(values), "max": max(values)} if values else None
    return {"energy_mj": energy, "mean_power_w": None if run_mw is None else run_mw / 1000.0,
            "idle_power_w": None if idle_mw is None else idle_mw / 1000.0,
            "throttled": None if why is None else bool(why), "telemetry_summary": summary}


class Sampler:
    """Samples in the background from start() to stop(): tegrastats where it exists, else sysfs.

    Readings carry monotonic timestamps, so the caller cuts windows (idle, run) out of one stream
    with `between`.
    """

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self.source = "tegrastats" if shutil.which("tegrastats") else "sysfs"
        self.samples: List[Sample] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._proc: Optional[subprocess.Popen] = None

    def start(self) -> "Sampler":
        if self.source == "tegrastats":
            self._proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          universal_newlines=True, bufsize=1)
            target = self._read_tegrastats
        else:
            target = self._poll_sysfs
        self._thread = threading.Thread(target=target, name="telemetry", daemon=True)
        self._thread.start()
        return self

    def _read_tegrastats(self) -> None:
        for line in self._proc.stdout:
            sample = parse_tegrastats(line, time.monotonic())
            if sample is not None:
                self.samples.append(sample)
            if self._stop.is_set():
                break

    def _poll_sysfs(self) -> None:
        while not self._stop.wait(self.interval_ms / 1000.0):
            sample = sysfs_sample(time.monotonic())
            if sample is not None:
                self.samples.append(sample)

    def between(self, t0: float, t1: float) -> List[Sample]:
        """The samples taken from monotonic time t0 to t1."""
        return [s for s in list(self.samples) if t0 <= s.t <= t1]

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)


def parse_l4t_release(text: Optional[str]) -> Optional[str]:
    """'R35.4.1' from /etc/nv_tegra_release's '# R35 (release), REVISION: 4.1, ...'."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def l4t_release() -> Optional[str]:
    """This Jetson's L4T release ('R35.4.1'), None elsewhere."""
    return parse_l4t_release(_read_text("/etc/nv_tegra_release"))


def parse_power_mode(text: Optional[str]) -> Optional[str]:
    """'MAXN (0)' from `nvpmodel -q`'s 'NV Power Mode: MAXN' followed by the mode number."""
    match = re.search(r"NV Power Mode:\s*(\S+)\s*(\d+)?", text or "")
    if not match:
        return None
    return f"{match.group(1)} ({match.group(2)})" if match.group(2) else match.group(1)


def jetson_state() -> Optional[dict]:
    """L4T release, power mode and `jetson_clocks --show` of a Jetson; None elsewhere."""
    if not os.path.exists("/etc/nv_tegra_release"):
        return None
    mode = _run(["nvpmodel", "-q"])
    clocks = _run(["jetson_clocks", "--show"])
    return {"l4t_release": l4t_release(), "power_mode": parse_power_mode(mode), "nvpmodel": mode,
            "jetson_clocks": clocks.splitlines()[:40] if clocks else None}


def load_average() -> Optional[List[float]]:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _run(cmd: List[str], timeout: float = 10.0) -> Optional[str]:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _read_text(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def _read_int(path: str) -> Optional[int]:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
