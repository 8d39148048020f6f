"""Deployment bundle: the artifact, its preprocessing, and golden inputs/outputs, in one folder.

A bundle is what ships to a device. `model.json` says how to turn an image into the input tensor
(the metadata whose loss made exported models score zero elsewhere), what precision and runtime
the artifact targets, and the sha256 of every other file; `golden.npz` lets the device prove,
with `verify_bundle`, that it reproduces the outputs the pipeline measured. model.json is sealed
from outside: `model.json.sha256` beside it (sha256sum's format) and the export manifest's
`bundle_sha256` record its hash, so an edited precision, label or file list is refused.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from calibration.hashing import sha256_file
from calibration.preprocess import Preprocessing
from exporters.spec import Precision
from runtimes import formats
# Reading and verifying live in runtimes/ so a device (which carries only runtimes/) runs the same
# checks; re-exported here for the export stage and existing callers.
from runtimes.bundle_check import (BUNDLE_VERSION, GOLDEN, INT8_MAX_REL, MODEL_JSON, SEAL,  # noqa: F401
                                   BundleError, read_bundle, seal, verify_bundle)

__all__ = ["BUNDLE_VERSION", "GOLDEN", "INT8_MAX_REL", "MODEL_JSON", "SEAL", "BundleError", "read_bundle", "seal",
           "verify_bundle", "write_bundle"]


def write_bundle(artifact_path: Path, out_dir: Path, preprocessing: Preprocessing, precision: Precision | str,
                 source_hashes: dict, golden_inputs: np.ndarray, golden_outputs: np.ndarray,
                 runtime: str) -> Path:
    """Write the bundle folder `out_dir` atomically (staged beside it, then renamed into place);
    `seal(out_dir)` gives the hash of its model.json to record outside it."""
    artifact_path, out_dir = Path(artifact_path), Path(out_dir)
    precision = Precision.parse(precision)
    handler = formats.for_file(artifact_path)
    files = _artifact_files(artifact_path, handler)
    golden_inputs = np.ascontiguousarray(golden_inputs, dtype=np.float32)
    golden_outputs = np.ascontiguousarray(golden_outputs, dtype=np.float32)
    if len(golden_inputs) != len(golden_outputs) or len(golden_inputs) == 0:
        raise BundleError(f"golden inputs ({len(golden_inputs)}) and outputs ({len(golden_outputs)}) "
                          "must be non-empty and of equal length")
    pre = preprocessing.with_(precision=precision.value)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        for f in files:
            shutil.copyfile(f, staging / f.name)
        np.savez(staging / GOLDEN, inputs=golden_inputs, outputs=golden_outputs)
        inputs, outputs = handler.io_signature(artifact_path, golden_inputs, golden_outputs)
        manifest = {
            "bundle_version": BUNDLE_VERSION,
            "artifact": artifact_path.name,
            "runtime": runtime,
            "precision": precision.value,
            "preprocessing": pre.to_dict(),
            "labels": list(pre.labels),
            "inputs": inputs,
            "outputs": outputs,
            "source_hashes": dict(source_hashes),
            "files": {p.name: sha256_file(p) for p in sorted(staging.iterdir())},
        }
        (staging / MODEL_JSON).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        (staging / SEAL).write_text(f"{sha256_file(staging / MODEL_JSON)}  {MODEL_JSON}\n")
        _swap_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _artifact_files(artifact: Path, handler) -> list[Path]:
    """The artifact and the files it cannot run without (OpenVINO's .bin, ONNX external weights)."""
    if not artifact.is_file():
        raise BundleError(f"bundle artifact {artifact} does not exist or is not a file")
    files = handler.model_files(artifact)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BundleError(f"{handler.name} model {artifact} has no {', '.join(missing)} beside it; "
                          f"re-export it")
    taken = [f.name for f in files if f.name in (MODEL_JSON, SEAL, GOLDEN)]
    if taken:
        raise BundleError(f"bundle artifact file {taken[0]} has a name the bundle keeps for itself; "
                          "rename the model file")
    return files


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / out_dir.name)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)
