"""Artifacts: the files a stage hands on, with their content hash and preprocessing metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from calibration.preprocess import Preprocessing
from pipeline.hashing import sha256_tree


class Format(str, Enum):
    torch = "torch"            # safetensors weights + model.json describing how to rebuild
    onnx = "onnx"
    openvino = "openvino"      # .xml (+ .bin beside it)
    tensorrt = "tensorrt"      # serialized engine
    data = "data"              # anything else (logit caches, plots, tables)


@dataclass
class Artifact:
    """One output file (or folder) of a stage. `path` is relative to the stage entry folder."""

    format: Format
    path: str
    sha256: str = ""
    metadata: dict = field(default_factory=dict)

    @classmethod
    def of(cls, entry_dir: Path, path: Path, fmt: Format, metadata: dict | None = None) -> "Artifact":
        rel = Path(path).relative_to(entry_dir)
        return cls(Format(fmt), str(rel), sha256_tree(path), dict(metadata or {}))

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.metadata["preprocessing"])

    def to_dict(self) -> dict:
        return {"format": self.format.value, "path": self.path, "sha256": self.sha256,
                "metadata": self.metadata}

    @classmethod
    def from_dict(cls, d: dict) -> "Artifact":
        return cls(Format(d["format"]), d["path"], d.get("sha256", ""), d.get("metadata", {}))
