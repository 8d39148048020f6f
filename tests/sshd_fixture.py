"""A real OpenSSH server on 127.0.0.1 for the target tests, and the "device" Pythons it runs.

The server has its own host key, config and authorized_keys in a temporary folder, accepts only
the generated user key, and is stopped after the tests. The device Python is a separate venv with
only numpy and onnxruntime (what a Jetson's runner needs), cached under /tmp by a version stamp;
a second, bare venv stands in for a device without numpy.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
VENV_STAMP = "numpy-onnxruntime-1"
REMOTE_VENV = Path(f"/tmp/edgeship-remote-venv-{VENV_STAMP}")
BARE_VENV = Path("/tmp/edgeship-remote-venv-bare-1")


def why_no_sshd() -> str | None:
    """None when sshd and the OpenSSH client are here, else the reason the tests skip."""
    for tool in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not tool or not os.access(tool, os.X_OK):
            return ("OpenSSH server or client missing (run `make test-deps`, or apt-get install -y "
                    "openssh-server openssh-client)")
    return None


def _python3() -> str:
    # The venvs must not inherit this test interpreter's packages: a plain system python3.
    return shutil.which("python3") or sys.executable


def remote_venv() -> tuple[Path | None, str]:
    """(python of the numpy + onnxruntime venv, "") or (None, why it could not be built)."""
    python = REMOTE_VENV / "bin" / "python"
    if (REMOTE_VENV / ".ready").exists():
        return python, ""
    shutil.rmtree(REMOTE_VENV, ignore_errors=True)
    try:
        subprocess.run([_python3(), "-m", "venv", str(REMOTE_VENV)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "numpy", "onnxruntime"],
                       check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as e:
        return None, f"could not build the device venv (pip install numpy onnxruntime): {e}"
    (REMOTE_VENV / ".ready").touch()
    return python, ""


def bare_venv() -> Path:
    """The python of a venv without numpy (a device whose Python lacks it)."""
    python = BARE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([_python3(), "-m", "venv", "--without-pip", str(BARE_VENV)], check=True,
                       capture_output=True, timeout=120)
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """sshd on 127.0.0.1:<free port> with a generated host key and user key."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.host_key, self.user_key = root / "host_ed25519", root / "user_ed25519"
        self.other_key = root / "other_ed25519"       # a key the server does not know
        for key in (self.host_key, self.user_key, self.other_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (root / "authorized_keys").write_text(self.user_key.with_suffix(".pub").read_text())
        self.known_hosts = root / "known_hosts"
        self.user = getpass.getuser()
        self.proc: subprocess.Popen | None = None
        self.port = _free_port()
        pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        (root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"PidFile {root / 'sshd.pid'}", f"AuthorizedKeysFile {root / 'authorized_keys'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", f"AllowUsers {self.user}", "LogLevel ERROR", ""]))

    def start(self) -> "Sshd":
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)   # its privilege-separation folder
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"))
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill_sessions()
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def _descendants(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        out, todo = [], [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    def kill_sessions(self) -> int:
        """SIGKILL every connection this server holds and what runs in it (the device dropping
        off the network mid-run); the server keeps listening. Returns how many were killed."""
        pids = self._descendants()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def target(self, **overrides):
        """A config Target that reaches this server as the device."""
        from pipeline.config_targets import Target
        fields = {"name": "loopback", "host": "127.0.0.1", "port": self.port, "user": self.user,
                  "identity_file": str(self.user_key), "known_hosts": str(self.known_hosts),
                  "workdir": str(self.root / "device-work"), "connect_timeout_s": 5}
        return Target(**{**fields, **overrides})
