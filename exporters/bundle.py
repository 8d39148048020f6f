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
from exporters.parity import ParityResult, compare_logits, run_in_chunks
from exporters.spec import Precision

BUNDLE_VERSION = 1
MODEL_JSON, GOLDEN = "model.json", "golden.npz"


class BundleError(RuntimeError):
    """A bundle is incomplete or its files do not match the hashes recorded in model.json."""


def write_bundle(artifact_path: Path, out_dir: Path, preprocessing: Preprocessing, precision: Precision | str,
                 source_hashes: dict, golden_inputs: np.ndarray, golden_outputs: np.ndarray,
                 runtime: str) -> Path:
    """Write the bundle folder `out_dir` atomically (staged beside it, then renamed into place)."""
    artifact_path, out_dir = Path(artifact_path), Path(out_dir)
    precision = Precision.parse(precision)
    files = _artifact_files(artifact_path)
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
        inputs, outputs = _io_signature(artifact_path, golden_inputs, golden_outputs)
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


def _artifact_files(artifact: Path) -> list[Path]:
    """The artifact and the files it cannot run without (OpenVINO's .bin, ONNX external weights)."""
    if not artifact.is_file():
        raise BundleError(f"bundle artifact {artifact} does not exist or is not a file")
    files = [artifact]
    if artifact.suffix == ".xml":
        weights = artifact.with_suffix(".bin")
        if not weights.is_file():
            raise BundleError(f"OpenVINO IR {artifact} has no {weights.name} beside it; re-export the IR")
        files.append(weights)
    external = artifact.with_name(artifact.name + ".data")
    if artifact.suffix == ".onnx" and external.is_file():
        files.append(external)
    return files


def _io_signature(artifact: Path, golden_in: np.ndarray, golden_out: np.ndarray) -> tuple[list, list]:
    """Input/output names and shapes as the artifact declares them (None for a dynamic dimension)."""
    if artifact.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(artifact), load_external_data=False).graph
        initializers = {t.name for t in graph.initializer}

        def describe(values):
            return [{"name": v.name, "shape": [d.dim_value if d.HasField("dim_value") else None
                                               for d in v.type.tensor_type.shape.dim]}
                    for v in values if v.name not in initializers]
        return describe(graph.input), describe(graph.output)
    if artifact.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(artifact))

        def describe(ports):
            return [{"name": p.get_any_name(), "shape": [d.get_length() if d.is_static else None
                                                         for d in p.get_partial_shape()]} for p in ports]
        return describe(model.inputs), describe(model.outputs)
    # A TensorRT engine cannot be read without TensorRT: record the exporter's names and the golden shapes.
    return ([{"name": "input", "shape": [None, *golden_in.shape[1:]]}],
            [{"name": "logits", "shape": [None, *golden_out.shape[1:]]}])


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / out_dir.name)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)
