"""Put the runner, bundles and val samples in a target's work folder, each once.

Everything shipped lives under a name made from its content hash (`runtimes-<sha12>/`,
`bundles/<sha12>/`, `val/<sha12>.npz`), so "already there" is one `test -e` per item, all in one
round trip, and two pipelines sharing a device never overwrite each other's files. An upload is
unpacked into a hidden `.partial-*` folder and renamed into place only when complete: a killed
upload leaves nothing that looks like a finished item, and the next run sends it again.
"""
from __future__ import annotations

import logging
import shlex
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.targets.ssh import TargetError, Transport, rpath

log = logging.getLogger(__name__)

COMPLETE = ".complete"
STALE_MINUTES = 24 * 60   # partial uploads and job folders older than this are debris of a kill


@dataclass(frozen=True)
class Upload:
    """One content-addressed item: `dest` relative to the work folder, from `local` (a folder,
    whose contents become `dest/`, or a file, which becomes `dest`)."""

    dest: str
    local: Path
    inside: str = ""      # a folder is sent as dest/<inside>/ instead of dest/ itself

    @property
    def marker(self) -> str:
        return self.dest if self.local.is_file() else f"{self.dest}/{COMPLETE}"


def _skip(info: tarfile.TarInfo):
    return None if "__pycache__" in info.name or info.name.endswith(".pyc") else info


def _tar(upload: Upload, into) -> None:
    with tarfile.open(fileobj=into, mode="w") as tar:
        if upload.local.is_file():
            tar.add(upload.local, arcname=Path(upload.dest).name)
        elif upload.inside:
            tar.add(upload.local, arcname=upload.inside, filter=_skip)
        else:
            for child in sorted(upload.local.iterdir()):
                tar.add(child, arcname=child.name, filter=_skip)


def present(transport: Transport, workdir: str, uploads: list[Upload]) -> set[str]:
    """The dests already complete on the target (one round trip); clears old partial uploads."""
    wd = rpath(workdir)
    checks = " ".join(shlex.quote(u.marker) for u in uploads)
    command = (f"mkdir -p {wd} && cd {wd} && "
               f"find . -maxdepth 3 \\( -name '.partial-*' -o -path './jobs/*' \\) -prune "
               f"-mmin +{STALE_MINUTES} -exec rm -rf {{}} + 2>/dev/null; "
               f"for p in {checks}; do if [ -e \"$p\" ]; then printf '%s\\n' \"$p\"; fi; done")
    done = transport.run(command, timeout=transport.target.connect_timeout_s + 60)
    if done.rc != 0:
        raise TargetError(f"target '{transport.target.name}': cannot use the work folder "
                          f"{workdir} ({done.err.strip()[-200:]}); check targets.workdir")
    there = set(done.out.decode().split())
    return {u.dest for u in uploads if u.marker in there}


def send(transport: Transport, workdir: str, upload: Upload, timeout: float) -> None:
    """Upload one item through a tar stream, unpacked aside and renamed into place."""
    wd, dest = rpath(workdir), shlex.quote(upload.dest)
    parent = shlex.quote(str(Path(upload.dest).parent))
    if upload.local.is_file():
        finish = f'mv -f "$tmp"/{shlex.quote(Path(upload.dest).name)} {dest} && rm -rf "$tmp"'
    else:
        # mv -T refuses to move onto a folder that already exists (a concurrent upload won).
        finish = f'touch "$tmp"/{COMPLETE} && {{ mv -T "$tmp" {dest} 2>/dev/null || rm -rf "$tmp"; }}'
    command = (f"cd {wd} && mkdir -p {parent} && tmp=$(mktemp -d {parent}/.partial-XXXXXX) && "
               f'{{ tar -xf - -C "$tmp" || {{ rm -rf "$tmp"; exit 1; }}; }} && {finish}')
    with tempfile.TemporaryFile() as f:
        _tar(upload, f)
        size = f.tell()
        f.seek(0)
        log.info("  targets: %s <- %s (%.1f MB)", transport.target.name, upload.dest, size / 1e6)
        done = transport.run(command, stdin=f, timeout=timeout)
    if done.rc != 0:
        raise TargetError(f"target '{transport.target.name}': uploading {upload.dest} failed "
                          f"(exit {done.rc}: {done.err.strip()[-200:]}); is the disk full?", "failed")


def ship(transport: Transport, workdir: str, uploads: list[Upload], timeout: float) -> dict:
    """Send what the target lacks; returns {"sent": [...], "present": [...]}."""
    uploads = list({u.dest: u for u in uploads}.values())
    there = present(transport, workdir, uploads)
    sent = []
    for u in uploads:
        if u.dest not in there:
            send(transport, workdir, u, timeout)
            sent.append(u.dest)
    return {"sent": sent, "present": sorted(there)}
