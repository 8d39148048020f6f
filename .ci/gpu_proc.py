"""Child processes of the GPU check, each bounded by a timeout, and none left running after it.

A lent GPU machine is held for minutes and keeps whatever a command leaves running, so every step
runs in its own process group, killed whole at its timeout and swept again when it ends; the
environment of every child carries a token, and any process still holding it afterwards
(a compile worker that started its own session, say) is found through /proc and killed too.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

TOKEN_VAR = "EDGESHIP_GPU_CHECK_TOKEN"
GRACE_S = 5.0          # between SIGTERM and SIGKILL at a timeout


@dataclass
class Step:
    """How one child process ended."""
    name: str
    cmd: list[str]
    rc: int | None          # None when it was killed at its timeout
    seconds: float
    timeout_s: float
    log: Path

    @property
    def timed_out(self) -> bool:
        return self.rc is None

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def record(self) -> dict:
        return {"rc": self.rc, "seconds": round(self.seconds, 1), "timeout_s": round(self.timeout_s),
                "timed_out": self.timed_out, "log": self.log.name, "command": " ".join(self.cmd)}


def new_token() -> str:
    return uuid.uuid4().hex


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_bounded(name: str, cmd: list[str], timeout: float, log: Path, env: dict[str, str],
                cwd: Path) -> Step:
    """Run `cmd` with stdout and stderr into `log`; past `timeout` seconds its whole process
    group gets SIGTERM, then SIGKILL. The group is killed again when it ends, whatever is left."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
            out.write(f"\n[gpu_check: {name} killed at its {timeout:.0f} s timeout]\n")
        except BaseException:  # interrupted: take the children down before going
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            _kill_group(proc.pid, signal.SIGKILL)
    return Step(name, cmd, rc, time.monotonic() - t0, timeout, log)


def holders(token: str, proc_root: Path = Path("/proc")) -> list[int]:
    """Pids of processes whose environment holds TOKEN_VAR=token (this process excluded)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    out = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:     # gone meanwhile, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            out.append(int(entry.name))
    return out


def sweep(token: str) -> list[int]:
    """Kill every process still carrying `token`; returns their pids (empty when none was left)."""
    left = holders(token)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return left
