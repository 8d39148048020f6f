"""Deployment bundle: the artifact, its preprocessing, and golden inputs/outputs, in one folder.

A bundle is what ships to a device. `model.json` says how to turn an image into the input tensor
(the metadata whose loss made exported models score zero elsewhere), what precision and runtime
the artifact targets, and the sha256 of every file; `golden.npz` lets the device prove, with
`verify_bundle`, that it reproduces the outputs the pipeline measured.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from calibration.hashing import sha256_file
from calibration.preprocess import Preprocessing
from exporters.parity import ParityResult, compare_logits
from exporters.spec import Precision
from runtimes import errors, formats
from runtimes.execution import run_in_chunks

BUNDLE_VERSION = 1
MODEL_JSON, GOLDEN = "model.json", "golden.npz"


class BundleError(RuntimeError, errors.StageFailed):
    """A bundle is incomplete or its files do not match the hashes recorded in model.json."""


def write_bundle(artifact_path: Path, out_dir: Path, preprocessing: Preprocessing, precision: Precision | str,
                 source_hashes: dict, golden_inputs: np.ndarray, golden_outputs: np.ndarray,
                 runtime: str) -> Path:
    """Write the bundle folder `out_dir` atomically (staged beside it, then renamed into place)."""
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
        _swap_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def read_bundle(bundle_dir: Path) -> dict:
    """model.json of a bundle, after checking every listed file against its sha256."""
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / MODEL_JSON
    if not manifest_path.is_file():
        raise BundleError(f"{bundle_dir} has no {MODEL_JSON}: not a bundle (write it with write_bundle)")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest["files"].items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"bundle {bundle_dir} is missing {name}; copy the whole folder")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"bundle file {path} has sha256 {actual[:12]}…, model.json records "
                              f"{expected[:12]}…: the file was changed or damaged; re-copy the bundle")
    return manifest


def verify_bundle(bundle_dir: Path, run_fn: Callable[[np.ndarray], np.ndarray]) -> ParityResult:
    """Feed the golden inputs to `run_fn` (the deployed model) and compare with the golden outputs."""
    manifest = read_bundle(bundle_dir)
    with np.load(Path(bundle_dir) / GOLDEN) as golden:
        inputs, expected = golden["inputs"], golden["outputs"]
    dim0 = manifest["inputs"][0]["shape"][0] if manifest["inputs"] and manifest["inputs"][0]["shape"] else None
    fixed = dim0 if isinstance(dim0, int) and dim0 > 0 else None
    return compare_logits(expected, run_in_chunks(run_fn, inputs, fixed), manifest["precision"])


def _artifact_files(artifact: Path, handler) -> list[Path]:
    """The artifact and the files it cannot run without (OpenVINO's .bin, ONNX external weights)."""
    if not artifact.is_file():
        raise BundleError(f"bundle artifact {artifact} does not exist or is not a file")
    files = handler.model_files(artifact)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BundleError(f"{handler.name} model {artifact} has no {', '.join(missing)} beside it; "
                          f"re-export it")
    return files


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / out_dir.name)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)
