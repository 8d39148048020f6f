"""The wheels the GPU check carries to a GPU machine: read the list, download, check, install.

    python3 .ci/gpu_wheels.py download [--dir .gpu-wheels]   fetch .ci/gpu_wheels.txt, then check
    python3 .ci/gpu_wheels.py check [--dir .gpu-wheels]      every listed wheel once, nothing else,
                                                             under 60 MiB in all

The folder travels with the working tree to a machine with no package index, where at most
64 MiB travel per command; 60 MiB leaves room for the tree itself. Exit 0 when the folder is
ready, 1 with one line saying what is wrong and the fix.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / ".ci" / "gpu_wheels.txt"
FOLDER = ROOT / ".gpu-wheels"
LIMIT_BYTES = 60 * 2**20
# The GPU image's Python; manylinux tags from the newest glibc the wheels need down to 2014.
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
WHEN = ("always", "if-missing")
# Distributions the GPU image brings that the pipeline imports, and those it runs without (their
# rows and exports then say why): with the list, every import of the four packages is accounted
# for (tests/test_gpu_check.py holds that).
IMAGE = ("torch", "torchvision", "timm", "numpy", "pillow", "matplotlib", "fonttools", "onnx",
         "onnxruntime", "scikit-learn", "pyyaml")
OPTIONAL = ("openvino", "nncf", "tensorrt")


class WheelError(Exception):
    """The list or the folder cannot be used; the message is one line naming what and the fix."""


@dataclass(frozen=True)
class Wheel:
    name: str       # normalised (PEP 503): lower case, runs of -_. as one -
    version: str
    when: str       # "always" or "if-missing"

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path = LIST) -> list[Wheel]:
    """The wheels of `path`: `name==version when` per line; # starts a comment."""
    wheels, seen = [], set()
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?:\s+(\S+))?", line)
        if not match or (match[3] or "always") not in WHEN:
            raise WheelError(f"{path}:{number}: {line!r} is not 'name==version' followed by "
                             f"'always' or 'if-missing'")
        wheel = Wheel(normalise(match[1]), match[2], match[3] or "always")
        if wheel.name in seen:
            raise WheelError(f"{path}:{number}: {wheel.name} is listed twice; keep one version "
                             "(two stop pip's install)")
        seen.add(wheel.name)
        wheels.append(wheel)
    return wheels


def wheel_of(path: Path) -> tuple[str, str]:
    """(normalised name, version) from a wheel's file name (name-version-...-tag.whl)."""
    parts = path.name.split("-")
    return normalise(parts[0]), parts[1]


def files_of(folder: Path, wheels: list[Wheel]) -> dict[Wheel, Path]:
    """Each listed wheel's file in `folder`. A listed wheel missing, or a wheel the list does
    not name (another version, a leftover), is an error: everything in the folder travels."""
    if not folder.is_dir():
        raise WheelError(f"wheel folder {folder} does not exist; run `python3 .ci/gpu_wheels.py "
                         "download` on a machine with pip and network")
    wanted = {(w.name, w.version): w for w in wheels}
    found, stray = {}, []
    for path in sorted(folder.glob("*.whl")):
        wheel = wanted.get(wheel_of(path))
        if wheel is None:
            stray.append(path.name)
        else:
            found[wheel] = path
    if stray:
        raise WheelError(f"{folder} holds wheels {LIST.name} does not list: {', '.join(stray)}; "
                         "remove them (or run download again, which does)")
    missing = [w.pin for w in wheels if w not in found]
    if missing:
        raise WheelError(f"{folder} lacks {', '.join(missing)}; run `python3 .ci/gpu_wheels.py "
                         "download` on a machine with pip and network")
    return found


def total_bytes(folder: Path) -> int:
    """Bytes of every file under `folder`: all of it travels."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def check(folder: Path = FOLDER, wheels: list[Wheel] | None = None,
          limit: int = LIMIT_BYTES) -> dict[Wheel, Path]:
    """The listed wheels' files, once the folder holds exactly them within `limit` bytes."""
    found = files_of(folder, read_list() if wheels is None else wheels)
    size = total_bytes(folder)
    if size > limit:
        raise WheelError(f"{folder} holds {size / 2**20:.1f} MiB, over the {limit / 2**20:.0f} "
                         f"MiB that may travel with the tree; drop a wheel from {LIST.name} or "
                         "mark it if-missing and leave it out")
    return found


def download(folder: Path = FOLDER, wheels: list[Wheel] | None = None,
             timeout: float = 600) -> dict[Wheel, Path]:
    """Fetch every listed wheel for the GPU image's Python into `folder`, remove wheels the list
    no longer names, and check the result."""
    wheels = read_list() if wheels is None else wheels
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms,
           "-d", str(folder), *[w.pin for w in wheels]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise WheelError(f"pip download exited {done.returncode}: {last}")
    wanted = {(w.name, w.version) for w in wheels}
    for path in folder.glob("*.whl"):
        if wheel_of(path) not in wanted:
            path.unlink()
    return check(folder, wheels)


def installed_version(name: str) -> str | None:
    """The version of distribution `name` this interpreter sees, or None."""
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def to_install(found: dict[Wheel, Path], have=installed_version) -> dict[str, dict]:
    """Per wheel: whether it is installed and why; `have(name)` is the version already here."""
    out = {}
    for wheel, path in found.items():
        present = have(wheel.name)
        install = wheel.when == "always" or present is None
        why = ("always" if wheel.when == "always" else
               "the image has none" if present is None else f"the image has {present}")
        out[wheel.name] = {"wheel": path.name, "version": wheel.version, "image_version": present,
                           "installed": install, "why": why}
    return out


def install(found: dict[Wheel, Path], target: Path, timeout: float = 180,
            have=installed_version) -> dict[str, dict]:
    """Install the wheels `to_install` picks into `target` (no index, no dependencies)."""
    plan = to_install(found, have)
    paths = [str(found[w]) for w in found if plan[w.name]["installed"]]
    if paths:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
               "--no-compile", "--no-cache-dir", "--disable-pip-version-check", "--upgrade",
               "--target", str(target), *paths]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise WheelError(f"pip install --target {target} exited {done.returncode}: {last}")
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_wheels", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("download", "check"))
    parser.add_argument("--dir", type=Path, default=FOLDER, help="the wheel folder (default .gpu-wheels)")
    args = parser.parse_args(argv)
    try:
        found = download(args.dir) if args.action == "download" else check(args.dir)
    except (WheelError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"gpu_wheels: {exc}", file=sys.stderr)
        return 1
    print(f"gpu_wheels: {len(found)} wheels, {total_bytes(args.dir) / 2**20:.1f} MiB in {args.dir} "
          f"(limit {LIMIT_BYTES / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
