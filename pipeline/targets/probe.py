"""Ask a target what it offers: reachable, its Python and numpy, each runtime, and a fingerprint.

The fingerprint joins the benchmark's cache key, so a target whose power mode, board, GPU driver
or runtime version changed is measured again, and one that did not is not.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pipeline.config_targets import Target
from pipeline.hashing import sha256_json
from pipeline.targets.ssh import TargetError, Transport, rpath

PROBE = Path(__file__).with_name("remote_probe.py")
# Facts that identify the device and its software; readings that drift (temperatures) stay out.
_STABLE = ("python", "machine", "system", "release", "cpu_model", "cores", "board", "l4t_release",
           "power_mode", "gpus")


@dataclass
class Probe:
    """What one target reported; `problem` is why it cannot be measured (None when it can)."""

    target: Target
    facts: dict = field(default_factory=dict)
    problem: str | None = None
    runtime_problems: dict = field(default_factory=dict)   # runtime -> why it cannot run there

    @property
    def fingerprint(self) -> str | None:
        if not self.facts:
            return None
        stable = {k: self.facts.get(k) for k in _STABLE}
        stable["numpy"] = (self.facts.get("numpy") or {}).get("version")
        stable["runtimes"] = {k: v.get("version") for k, v in (self.facts.get("runtimes") or {}).items()}
        return sha256_json(stable)

    def line(self) -> str:
        """One line for `edgeship targets`: the facts, or what is wrong and the fix."""
        t, f = self.target, self.facts
        head = f"{t.name:<14} {t.kind.value:<5} {'required' if t.required else 'optional':<8}"
        if self.problem:
            return f"{head} FAIL  {self.problem}"
        runtimes = ", ".join(f"{k} {v.get('version')}" for k, v in f["runtimes"].items()
                             if k not in self.runtime_problems)
        missing = "".join(f"; MISSING {why}" for why in self.runtime_problems.values())
        status = "ok  " if not self.runtime_problems else "FAIL"
        where = f.get("board") or f.get("cpu_model") or f.get("machine")
        power = f"; power mode {f['power_mode']}" if f.get("power_mode") else ""
        return (f"{head} {status}  python {f['python']}, numpy {f['numpy']['version']}, "
                f"{runtimes or 'no runtime'}; {where}{power}; fingerprint "
                f"{(self.fingerprint or '')[:12]}{missing}")

    @property
    def usable(self) -> bool:
        """At least one configured runtime can run there."""
        return self.problem is None and len(self.runtime_problems) < len(self.target.runtimes)


def probe(target: Target, transport: Transport | None = None) -> Probe:
    """Run the probe script on the target with its configured Python."""
    transport = transport or Transport(target)
    wanted = [r.value for r in target.runtimes]
    command = " ".join([rpath(target.python), "-", *wanted])
    result = Probe(target)
    try:
        done = transport.run(command, stdin=PROBE.read_bytes(), timeout=target.connect_timeout_s + 60)
    except TargetError as e:
        result.problem = str(e)
        return result
    if done.rc != 0:
        last = " ".join(done.err.strip().splitlines()[-1:])[:200]
        if done.rc == 127 or "not found" in last or "No such file" in last:
            result.problem = (f"target '{target.name}': no Python at targets.python "
                              f"'{target.python}' ({last}); install python3 there or point "
                              "targets.python at it")
        else:
            result.problem = f"target '{target.name}': the probe failed with exit {done.rc} ({last})"
        return result
    try:
        result.facts = json.loads(done.out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        result.problem = (f"target '{target.name}': the probe printed no readable report "
                          f"(got {done.out[:120]!r}); does the login shell print text?")
        return result
    numpy = result.facts["numpy"]
    if numpy.get("error"):
        result.problem = (f"target '{target.name}': {target.python} has no numpy ({numpy['error']}); "
                          f"install it there: {target.python} -m pip install numpy")
        return result
    for name, info in result.facts["runtimes"].items():
        if info.get("error"):
            hint = ("TensorRT comes with JetPack (python3-libnvinfer)" if name == "tensorrt"
                    else f"{target.python} -m pip install {name}")
            result.runtime_problems[name] = (f"{name} is not importable by {target.python} on "
                                             f"'{target.name}' ({info['error']}); {hint}")
    return result


@lru_cache(maxsize=None)
def _cached(target_json: str) -> Probe:
    return probe(Target.model_validate_json(target_json))


def probe_once(target: Target) -> Probe:
    """`probe(target)`, asked once per process (the cache key and the benchmark both need it)."""
    return _cached(target.model_dump_json())


def forget() -> None:
    """Drop remembered probes (a test that changes a target in between)."""
    _cached.cache_clear()
