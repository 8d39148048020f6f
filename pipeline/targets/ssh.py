"""Commands on a target: through the system OpenSSH client, or a local shell for `kind: local`.

OpenSSH rather than a Python SSH library: it already reads the user's ~/.ssh/config (aliases,
ProxyJump to a Jetson behind a bastion), their agent and hardware keys, and known_hosts exactly as
`ssh` on the command line does, so a target that works in a terminal works here; it ships with
every Linux CI image, and it adds no dependency to the pipeline. Every call is an argument list
(no local shell); the one string that does reach a shell is the remote command, assembled from
shlex-quoted parts. Host keys are checked (StrictHostKeyChecking=yes) and nothing prompts
(BatchMode=yes), so an unknown host or a refused key is an error with a fix, never a hang.
"""
from __future__ import annotations

import logging
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.config_targets import Target, TargetKind
from runtimes import errors

log = logging.getLogger(__name__)

KEEPALIVE_S = 5          # a device that stops answering is given up after 3 of these
SSH_FAILED = 255         # ssh's own exit status: the connection, not the remote command, failed


class TargetError(RuntimeError, errors.Unavailable):
    """A target could not be reached or used; `status` is the rows' status ("unavailable" when the
    target or its software is missing, "failed" when a measurement broke off)."""

    def __init__(self, message: str, status: str = "unavailable"):
        super().__init__(message)
        self.status = status


@dataclass
class Completed:
    rc: int
    out: bytes
    err: str


def rpath(path: str) -> str:
    """A remote path for the shell, quoted; a leading `~/` stays the remote user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


class Transport:
    """Runs shell commands on one target and says, in one line with the fix, why one could not."""

    def __init__(self, target: Target):
        self.target = target

    @property
    def where(self) -> str:
        t = self.target
        if t.kind == TargetKind.local:
            return "this machine"
        return f"{t.user + '@' if t.user else ''}{t.host}{':' + str(t.port) if t.port else ''}"

    def argv(self, command: str) -> list[str]:
        """The command line that runs `command` (a shell command) on the target."""
        t = self.target
        if t.kind == TargetKind.local:
            return ["sh", "-c", command]
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={t.connect_timeout_s}",
                "-o", f"ServerAliveInterval={KEEPALIVE_S}", "-o", "ServerAliveCountMax=3"]
        if t.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={Path(t.known_hosts).expanduser()}"]
        if t.identity_file:
            argv += ["-i", str(Path(t.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        if t.port:
            argv += ["-p", str(t.port)]
        if t.user:
            argv += ["-l", t.user]
        return argv + ["--", t.host, command]

    def run(self, command: str, stdin=None, timeout: float | None = None) -> Completed:
        """Run `command` there; `stdin` is bytes or an open file. Raises TargetError when the
        connection fails or `timeout` (seconds) passes; a remote non-zero exit is returned."""
        argv = self.argv(command)
        log.debug("target %s: %s", self.target.name, shlex.join(argv))
        kwargs = {"input": stdin} if isinstance(stdin, (bytes, type(None))) else {"stdin": stdin}
        if stdin is None:
            kwargs = {"stdin": subprocess.DEVNULL}
        try:
            p = subprocess.run(argv, capture_output=True, timeout=timeout, **kwargs)
        except subprocess.TimeoutExpired:
            raise TargetError(f"target '{self.target.name}' ({self.where}): no answer within "
                              f"{timeout:g} s; raise targets.timeout_s if the work needs longer",
                              "failed") from None
        except FileNotFoundError:
            raise TargetError(f"target '{self.target.name}': the OpenSSH client 'ssh' is not "
                              "installed here; install it (apt-get install openssh-client)") from None
        err = p.stderr.decode(errors="replace")
        if p.returncode == SSH_FAILED and self.target.kind == TargetKind.ssh:
            raise TargetError(self.connection_problem(err))
        return Completed(p.returncode, p.stdout, err)

    def connection_problem(self, err: str) -> str:
        """Why ssh could not run the command, and the fix, from its stderr."""
        t, name = self.target, f"target '{self.target.name}' ({self.where})"
        last = " ".join(err.strip().splitlines()[-1:])[:200]
        kh = t.known_hosts or "~/.ssh/known_hosts"
        if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
            return (f"{name}: its host key is not in {kh} (or has changed); after checking the "
                    f"key, add it: ssh-keyscan {'-p ' + str(t.port) + ' ' if t.port else ''}"
                    f"{t.host} >> {kh}")
        if "Permission denied" in err or "Too many authentication failures" in err:
            key = f" -i {t.identity_file}" if t.identity_file else ""
            return (f"{name}: the key was refused ({last}); install it on the device: "
                    f"ssh-copy-id{key} {'-p ' + str(t.port) + ' ' if t.port else ''}"
                    f"{t.user + '@' if t.user else ''}{t.host}")
        if "Could not resolve hostname" in err:
            return f"{name}: unknown host ({last}); check targets.host or the alias in ~/.ssh/config"
        if any(s in err for s in ("Connection refused", "timed out", "No route to host",
                                  "Network is unreachable", "Connection closed", "Connection reset")):
            return (f"{name}: unreachable ({last}); is the device on, on the network, and running "
                    "sshd on that port?")
        if "Broken pipe" in err or "Timeout, server" in err:
            return f"{name}: the connection dropped mid-way ({last}); the device disconnected"
        return f"{name}: ssh failed ({last or 'no message'})"
