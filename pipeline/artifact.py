"""Artifacts: the files a stage hands on, with their content hash and preprocessing metadata.

An artifact records its size and sha256, and for a folder the size and sha256 of every file in
it, so a damaged artifact is found before it is served from the cache or read by a stage, and
the message names the very file that changed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from calibration.hashing import sha256_file
from calibration.preprocess import Preprocessing


class Format(str, Enum):
    torch = "torch"            # safetensors weights + model.json describing how to rebuild
    onnx = "onnx"
    openvino = "openvino"      # .xml (+ .bin beside it)
    tensorrt = "tensorrt"      # serialized engine
    data = "data"              # anything else (logit caches, plots, tables)


def _folder_files(path: Path) -> dict[str, dict]:
    """{relative name: {size, sha256}} of every file under a folder, sorted by name."""
    return {str(f.relative_to(path)): {"size": f.stat().st_size, "sha256": sha256_file(f)}
            for f in sorted(p for p in path.rglob("*") if p.is_file())}


def _tree_digest(files: dict[str, dict]) -> str:
    """The folder hash of `pipeline.hashing.sha256_tree`, from per-file records (no second read)."""
    h = hashlib.sha256()
    for name, rec in files.items():
        h.update(name.encode())
        h.update(rec["sha256"].encode())
    return h.hexdigest()


@dataclass
class Artifact:
    """One output file (or folder) of a stage. `path` is relative to the stage entry folder.

    `size` (bytes, a folder's total) and `files` (a folder's per-file records) are None in
    manifests written before they existed; such artifacts are checked by sha256 alone.
    """

    format: Format
    path: str
    sha256: str = ""
    metadata: dict = field(default_factory=dict)
    size: int | None = None
    files: dict[str, dict] | None = None

    @classmethod
    def of(cls, entry_dir: Path, path: Path, fmt: Format, metadata: dict | None = None) -> "Artifact":
        path = Path(path)
        rel = path.relative_to(entry_dir)
        if path.is_file():
            return cls(Format(fmt), str(rel), sha256_file(path), dict(metadata or {}), path.stat().st_size)
        files = _folder_files(path)
        return cls(Format(fmt), str(rel), _tree_digest(files), dict(metadata or {}),
                   sum(r["size"] for r in files.values()), files)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.metadata["preprocessing"])

    def problem(self, entry_dir: Path) -> tuple[Path, str] | None:
        """(the damaged file, why) when the artifact on disk differs from this record, else None.

        Sizes are compared before any hashing, so a truncated file costs a stat, not a read.
        """
        path = Path(entry_dir) / self.path
        if not self.sha256:
            return path, "the manifest records no sha256 for it (damaged manifest)"
        if path.is_file():
            actual = path.stat().st_size
            if self.size is not None and actual != self.size:
                return path, f"size {actual} bytes differs from the manifest's {self.size} (damaged)"
            if sha256_file(path) != self.sha256:
                return path, "sha256 differs from the manifest (damaged)"
            return None
        if not path.is_dir():
            return path, "missing (deleted from the store)"
        if self.files is None:      # an old manifest: only the folder's hash to go by
            return None if _tree_digest(_folder_files(path)) == self.sha256 else \
                (path, "sha256 differs from the manifest (damaged)")
        return self._folder_problem(path)

    def _folder_problem(self, path: Path) -> tuple[Path, str] | None:
        on_disk = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        for name in on_disk:
            if name not in self.files:
                return path / name, "not in the manifest (a file was added to the entry)"
        for name, rec in self.files.items():
            f = path / name
            if not f.is_file():
                return f, "missing (deleted from the store)"
            if f.stat().st_size != rec.get("size"):
                return f, f"size {f.stat().st_size} bytes differs from the manifest's {rec.get('size')} (damaged)"
        for name, rec in self.files.items():
            if sha256_file(path / name) != rec.get("sha256"):
                return path / name, "sha256 differs from the manifest (damaged)"
        if _tree_digest(self.files) != self.sha256:
            return path, "the manifest's file records do not add up to its sha256 (damaged manifest)"
        return None

    def to_dict(self) -> dict:
        d = {"format": self.format.value, "path": self.path, "sha256": self.sha256,
             "metadata": self.metadata}
        if self.size is not None:
            d["size"] = self.size
        if self.files is not None:
            d["files"] = self.files
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Artifact":
        """Read a record back; a record of the wrong shape raises ValueError (a damaged manifest)."""
        files, size = d.get("files"), d.get("size")
        shaped = (isinstance(d.get("path"), str) and isinstance(d.get("sha256", ""), str)
                  and isinstance(d.get("metadata", {}), dict)
                  and (size is None or type(size) is int)
                  and (files is None or (isinstance(files, dict) and all(
                      isinstance(r, dict) and type(r.get("size")) is int and isinstance(r.get("sha256"), str)
                      for r in files.values()))))
        if not shaped:
            raise ValueError(f"artifact record {str(d)[:80]} is not of the expected shape")
        return cls(Format(d["format"]), d["path"], d.get("sha256", ""), d.get("metadata", {}), size, files)
