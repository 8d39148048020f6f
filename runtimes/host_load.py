"""How busy the host was while latency was measured: load average, CPU frequency, steal time,
and the CPU other processes used.

`HostLoadMonitor` reads /proc once a second in a background thread (two small files, tens of
microseconds, so it does not disturb what it watches) and lists the busiest other processes
from per-process CPU time at start and stop. Linux only; elsewhere every reading is None.
A latency number from a host that was busy is still recorded, with the reason it may be off.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

# Other processes' CPU above this share of the cores this process may use, or steal above this
# share of CPU time, marks the host as noisy: the numbers then carry a warning.
NOISY_OTHERS_SHARE = 0.25
NOISY_STEAL_SHARE = 0.05
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cpu_times(text: str | None = None) -> dict | None:
    """Aggregate CPU time from /proc/stat (or `text` in its format), in ticks: busy, idle, steal, total."""
    text = _read("/proc/stat") if text is None else text
    if not text or not text.startswith("cpu "):
        return None
    v = [int(x) for x in text.splitlines()[0].split()[1:9]]
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "steal": steal,
            "total": sum(v), "cpus": sum(1 for ln in text.splitlines() if ln[:3] == "cpu" and ln[3:4].isdigit())}


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (name, CPU ticks so far, parent pid) of every process readable here."""
    out = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            raw = _read(f"/proc/{entry.name}/stat")
            if raw and ")" in raw:
                fields = raw.rsplit(")", 1)[-1].split()
                out[int(entry.name)] = (raw[raw.find("(") + 1:raw.rfind(")")], int(fields[11]) + int(fields[12]),
                                        int(fields[1]))
    return out


def _family(procs: dict[int, tuple[str, int, int]], root: int) -> set[int]:
    """`root` and every live process descending from it (the benchmark's worker processes)."""
    children: dict[int, list[int]] = {}
    for pid, (_, _, ppid) in procs.items():
        children.setdefault(ppid, []).append(pid)
    family, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in family:
                family.add(child)
                todo.append(child)
    return family


def _own_ticks() -> int | None:
    """CPU ticks of this process, its live descendants and its reaped children: the benchmark's
    own work, wherever it ran (rows are timed in worker processes)."""
    raw = _read("/proc/self/stat")
    if not raw:
        return None
    fields = raw.rsplit(")", 1)[-1].split()
    reaped = int(fields[13]) + int(fields[14])               # cutime + cstime
    procs = _processes()
    return reaped + sum(procs[pid][1] for pid in _family(procs, os.getpid()) if pid in procs)


def _frequency_mhz() -> float | None:
    freqs = []
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"):
        value = _read(str(cpu))
        if value and value.strip().isdigit():
            freqs.append(int(value) / 1000)
    return round(sum(freqs) / len(freqs), 1) if freqs else None


def snapshot() -> dict:
    """Readings at one moment: load average (1 min), mean CPU frequency, CPU and own ticks."""
    load = (_read("/proc/loadavg") or "").split()
    return {"time": time.time(), "loadavg_1m": float(load[0]) if load else None,
            "frequency_mhz": _frequency_mhz(), "cpu": cpu_times(), "self_ticks": _own_ticks()}


def interval(a: dict, b: dict) -> dict:
    """Between two snapshots: other processes' CPU in cores, steal share, own CPU in cores."""
    ca, cb = a.get("cpu"), b.get("cpu")
    if not ca or not cb or cb["total"] <= ca["total"]:
        return {"others_cores": None, "steal_share": None, "self_cores": None}
    cpus = max(1, cb["cpus"])
    wall_ticks = (cb["total"] - ca["total"]) / cpus          # ticks of one CPU in this interval
    own = ((b["self_ticks"] or 0) - (a["self_ticks"] or 0))
    others = max(0, cb["busy"] - ca["busy"] - own)
    return {"others_cores": round(others / wall_ticks, 3), "self_cores": round(own / wall_ticks, 3),
            "steal_share": round((cb["steal"] - ca["steal"]) / (cb["total"] - ca["total"]), 4)}


class HostLoadMonitor:
    """Samples the host once a second between `start()` and `stop()`; `stop()` returns the record."""

    def __init__(self, period_s: float = 1.0, usable_cores: int | None = None):
        self.period_s, self.usable_cores = period_s, usable_cores or 1
        self._samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict = {}

    def start(self) -> "HostLoadMonitor":
        self._procs = _processes()
        self._samples = [snapshot()]
        self._thread = threading.Thread(target=self._loop, name="host-load", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self._samples.append(snapshot())

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._samples.append(snapshot())
        return summarize(self._samples, self._procs, _processes(), self.usable_cores)


def _busiest(before: dict, after: dict, seconds: float, top: int = 5) -> list[dict]:
    own = _family(after, os.getpid())
    used = [(pid, name, (ticks - before[pid][1]) / TICKS / seconds)
            for pid, (name, ticks, _) in after.items() if pid in before and pid not in own]
    used = sorted((u for u in used if u[2] >= 0.05), key=lambda u: -u[2])[:top]
    return [{"pid": pid, "name": name, "cores": round(c, 2)} for pid, name, c in used]


def summarize(samples: list[dict], procs_before: dict, procs_after: dict, usable_cores: int) -> dict:
    """The record: before/after readings, per-second series, the whole interval, the busiest
    other processes, and whether the host was noisy (with the reasons)."""
    first, last = samples[0], samples[-1]
    seconds = max(1e-6, last["time"] - first["time"])
    whole = interval(first, last)
    series = [{"t": round(b["time"] - first["time"], 1), "loadavg_1m": b["loadavg_1m"],
               "frequency_mhz": b["frequency_mhz"], **interval(a, b)}
              for a, b in zip(samples, samples[1:])]
    reasons = []
    if whole["others_cores"] is not None and whole["others_cores"] > NOISY_OTHERS_SHARE * usable_cores:
        reasons.append(f"other processes used {whole['others_cores']:.2f} of the {usable_cores} "
                       f"core(s) this benchmark may use")
    if whole["steal_share"] is not None and whole["steal_share"] > NOISY_STEAL_SHARE:
        reasons.append(f"the hypervisor stole {whole['steal_share']:.1%} of CPU time")
    freqs = [s["frequency_mhz"] for s in samples if s["frequency_mhz"]]
    if freqs and min(freqs) < 0.85 * max(freqs):
        reasons.append(f"CPU frequency varied from {min(freqs):.0f} to {max(freqs):.0f} MHz")
    return {"seconds": round(seconds, 1), "usable_cores": usable_cores,
            "before": {k: first[k] for k in ("loadavg_1m", "frequency_mhz")},
            "after": {k: last[k] for k in ("loadavg_1m", "frequency_mhz")},
            "during": whole, "series": series, "busiest_others": _busiest(procs_before, procs_after, seconds),
            "noisy": bool(reasons), "reasons": reasons}
