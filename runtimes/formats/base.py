"""What a format handler answers, so code elsewhere asks it instead of branching on a format name.

A handler owns what is true of model files of one format: which files make up a model, whether
its batch axis is static, where its preprocessing metadata is stored, its declared inputs and
outputs, and which runtime scores it by default (the runtime registry says which can serve it:
`runtimes.for_format`). It imports its
library (onnx, openvino) only inside the methods that read files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class FormatHandler:
    """The defaults every handler shares; each format overrides what differs."""

    name: str = ""
    suffixes: tuple[str, ...] = ()
    deployable: bool = True        # ships to a device (torch checkpoints are references)
    rebuilt_in_memory: bool = False  # runtimes take the rebuilt model, not the file (torch)
    scoring_runtime: str = ""      # the runtime that scores, checks and bundles it by default
    max_scoring_batch: int | None = None  # images per call when scoring (None: no limit)

    def model_files(self, path: Path) -> list[Path]:
        """The files that make up the model: what a device has to store and a bundle to carry."""
        return [Path(path)]

    def size_bytes(self, path: Path) -> int:
        """Bytes on disk of the model's graph and weight files (not sidecars, not golden data)."""
        return sum(f.stat().st_size for f in self.model_files(path) if f.is_file())

    def static_batch(self, path: Path) -> int | None:
        """The batch size the model was exported with when its batch axis is static, else None."""
        return None

    def read_preprocessing(self, path: Path) -> dict | None:
        """The preprocessing stored with the model, as a dict, or None when it has none."""
        return _sidecar(path).get("preprocessing")

    def io_signature(self, path: Path, golden_in: np.ndarray | None = None,
                     golden_out: np.ndarray | None = None) -> tuple[list[dict], list[dict]]:
        """Input and output names and shapes ({"name", "shape"}, None for a dynamic dimension).

        Formats that cannot be read without their runtime record generic names and the shapes
        of the golden data with a dynamic batch axis.
        """
        if golden_in is None or golden_out is None:
            raise ValueError(f"the shapes of a {self.name} model cannot be read from its file "
                             f"here; give them explicitly (e.g. --shape 1,3,H,W)")
        return ([{"name": "input", "shape": [None, *golden_in.shape[1:]]}],
                [{"name": "logits", "shape": [None, *golden_out.shape[1:]]}])

    def __repr__(self) -> str:
        return f"<format {self.name}>"


def _sidecar(path: Path) -> dict:
    """The JSON written beside a model file (model.json for a checkpoint, <stem>.json otherwise)."""
    path = Path(path)
    side = path / "model.json" if path.is_dir() else path.with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else {}
