"""Checking a deployment bundle: everything the device needs to trust one, and nothing else.

A bundle (written by exporters/bundle.py) is trusted once model.json hashes to its seal (the
sidecar, and the export manifest's `bundle_sha256` when the caller has it), every file it lists
matches its sha256, and the deployed model reproduces golden.npz under the parity rules. This is
the one copy of those checks: the export stage imports it through exporters.bundle, and the device
runner, which carries only runtimes/, imports it from here.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from runtimes import errors
from runtimes.execution import run_in_chunks
from runtimes.hashing import sha256_file
from runtimes.parity import ParityError, ParityResult, compare_logits
from runtimes.precision import Precision

BUNDLE_VERSION = 2
MODEL_JSON, GOLDEN = "model.json", "golden.npz"
SEAL = f"{MODEL_JSON}.sha256"
_FIELDS = ("bundle_version", "artifact", "runtime", "precision", "preprocessing", "labels", "inputs",
           "outputs", "files")
# int8 logits may move between machines (kernels differ with the CPU's instruction set) but not by
# a quarter of the range of all golden logits. Even another runtime altogether (OpenVINO instead of
# ONNX Runtime on tests/configs/tiny.yaml's Q/DQ model) moved them by 9.6% of it over the golden
# inputs and 12% over every val image. The range is taken over all samples, not per sample: a
# sample whose logits nearly tie has a tiny range, and that drift reached 86% of one such range.
INT8_MAX_REL = 0.25


class BundleError(RuntimeError, errors.StageFailed):
    """A bundle is incomplete, altered, or does not reproduce its golden outputs."""


def seal(bundle_dir: Path) -> str:
    """The sha256 of the bundle's model.json as its sidecar records it (the export manifest keeps
    the same value as the artifact's `bundle_sha256`)."""
    path = Path(bundle_dir) / SEAL
    if not path.is_file():
        raise BundleError(f"bundle {bundle_dir} has no {SEAL} (the sha256 of {MODEL_JSON}): the folder is "
                          "incomplete or was written by an older edgeship; re-copy or re-export it")
    parts = path.read_text(errors="replace").split()
    if len(parts) != 2 or parts[1] != MODEL_JSON or not _is_sha256(parts[0]):
        raise BundleError(f"bundle file {path} is not '<sha256>  {MODEL_JSON}': it was damaged; "
                          "re-copy the bundle")
    return parts[0]


def read_bundle(bundle_dir: Path, expected_sha256: str | None = None) -> dict:
    """model.json of a bundle, once everything in the folder is proven to be what was exported.

    model.json must hash to `expected_sha256` (the export manifest's `bundle_sha256`) and to its
    sidecar; a device holding only the folder passes None and relies on the sidecar, which catches
    damage and careless edits but not someone who re-seals. It must list the artifact and golden.npz
    by plain file names, exactly the files present besides itself and its sidecar, each matching
    its sha256. Raises BundleError naming what differs.
    """
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / MODEL_JSON
    if not manifest_path.is_file():
        raise BundleError(f"{bundle_dir} has no {MODEL_JSON}: not a bundle (write it with write_bundle)")
    recorded, actual = seal(bundle_dir), sha256_file(manifest_path)
    if expected_sha256 is not None and actual != expected_sha256:
        raise BundleError(f"bundle {manifest_path} has sha256 {actual}, the export manifest records "
                          f"{expected_sha256}: model.json was edited or belongs to another export; "
                          "re-copy the bundle from the export stage")
    if actual != recorded:
        raise BundleError(f"bundle {manifest_path} has sha256 {actual}, {SEAL} records {recorded}: "
                          "model.json was edited or damaged; re-copy the bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle {manifest_path} is not valid JSON ({e}); re-copy the bundle") from None
    _check_fields(manifest, manifest_path)
    _check_listing(manifest["files"], bundle_dir)
    for name, expected in manifest["files"].items():
        path = bundle_dir / name
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"bundle file {path} has sha256 {actual[:12]}…, model.json records "
                              f"{expected[:12]}…: the file was changed or damaged; re-copy the bundle")
    return manifest


def verify_bundle(bundle_dir: Path, run_fn: Callable[[np.ndarray], np.ndarray],
                  expected_sha256: str | None = None) -> ParityResult:
    """Feed the golden inputs to `run_fn` (the deployed model) and compare with the golden outputs.

    Every precision is held to a logit bound (int8: INT8_MAX_REL of the golden logits' range) and
    to top-1 agreement; returns the ParityResult, or raises BundleError with the measured |Δ|, its
    bound and the agreement. `expected_sha256` is passed on to `read_bundle`.
    """
    bundle_dir = Path(bundle_dir)
    return check_golden(bundle_dir, read_bundle(bundle_dir, expected_sha256), run_fn)


def check_golden(bundle_dir: Path, manifest: dict, run_fn: Callable[[np.ndarray], np.ndarray]) -> ParityResult:
    """The golden comparison of `verify_bundle` for a bundle already read with `read_bundle`
    (`manifest`), so a caller that loads the model in between hashes the files once."""
    bundle_dir = Path(bundle_dir)
    inputs, expected = _golden(bundle_dir / GOLDEN)
    fixed = static_batch(manifest)
    try:
        result = compare_logits(expected, run_in_chunks(run_fn, inputs, fixed), manifest["precision"])
    except ParityError as e:
        raise BundleError(f"bundle {bundle_dir}: {e}") from None
    result = _with_int8_bound(result, expected)
    if not result.passed:
        raise BundleError(f"bundle {bundle_dir} does not reproduce its golden outputs: {result.describe()}; "
                          "the model, runtime or preprocessing here differs from what was exported")
    return result


def static_batch(manifest: dict) -> Optional[int]:
    """The model's static batch size as model.json records it, None for a dynamic batch axis."""
    inputs = manifest.get("inputs") or [{}]
    shape = inputs[0].get("shape") if isinstance(inputs[0], dict) else None
    dim0 = shape[0] if shape else None
    return dim0 if isinstance(dim0, int) and dim0 > 0 else None


def _with_int8_bound(result: ParityResult, golden: np.ndarray) -> ParityResult:
    """Add the int8 logit bound, which parity leaves unchecked, to a bundle check's result.

    Here the reference is the same artifact's own output, so the bound only has to absorb kernel
    differences between machines; parity between runtimes (ORT vs OpenVINO vs TensorRT Q/DQ
    arithmetic) keeps judging int8 by its decisions alone.
    """
    if Precision.parse(result.precision) is not Precision.INT8:
        return result
    spread = float(np.max(golden) - np.min(golden)) if golden.size else 0.0
    tol = INT8_MAX_REL * spread
    return replace(result, max_abs_tolerance=tol, passed=result.passed and result.max_abs_diff <= tol)


def _check_fields(manifest, path: Path) -> None:
    """model.json has every field, of the right kind, and names its artifact and golden file."""
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {path} is not a JSON object; re-export the bundle")
    missing = [k for k in _FIELDS if k not in manifest]
    if missing:
        raise BundleError(f"bundle {path} lacks field(s) {', '.join(missing)}; re-export the bundle")
    if manifest["bundle_version"] != BUNDLE_VERSION:
        raise BundleError(f"bundle {path} has bundle_version {manifest['bundle_version']!r}, this edgeship "
                          f"reads {BUNDLE_VERSION}; re-export the bundle")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) and _is_sha256(v) for v in files.values()):
        raise BundleError(f"bundle {path}: field 'files' must map file names to sha256 hex digests")
    for name in files:
        if not _plain_name(name):
            raise BundleError(f"bundle {path} lists file {name!r}: entries must be plain file names "
                              "inside the bundle folder (no separators, '..' or absolute paths)")
    for name, what in ((manifest["artifact"], "the artifact"), (GOLDEN, "the golden outputs")):
        if not isinstance(name, str) or name not in files:
            raise BundleError(f"bundle {path} does not list {what} {name!r} in 'files', so nothing "
                              "would check it; re-export the bundle")
    try:
        precision = Precision.parse(manifest["precision"])
    except ValueError as e:
        raise BundleError(f"bundle {path}: field 'precision': {e}") from None
    pre = manifest["preprocessing"]
    if not isinstance(pre, dict) or pre.get("precision") != precision.value:
        raise BundleError(f"bundle {path}: preprocessing.precision {_get(pre, 'precision')!r} differs from "
                          f"precision {precision.value!r}; re-export the bundle")
    if manifest["labels"] != pre.get("labels"):
        raise BundleError(f"bundle {path}: labels {manifest['labels']!r} differ from preprocessing.labels "
                          f"{pre.get('labels')!r}; re-export the bundle")


def _check_listing(files: dict, bundle_dir: Path) -> None:
    """The files listed are exactly the files present, model.json and its sidecar aside."""
    present = {p.name for p in bundle_dir.iterdir()} - {MODEL_JSON, SEAL}
    missing = sorted(set(files) - present)
    if missing:
        raise BundleError(f"bundle {bundle_dir} is missing {', '.join(missing)}; copy the whole folder")
    extra = sorted(present - set(files))
    if extra:
        raise BundleError(f"bundle {bundle_dir} holds {', '.join(extra)}, which model.json does not list; "
                          "remove it or re-copy the bundle")
    odd = sorted(n for n in files if not (bundle_dir / n).is_file() or (bundle_dir / n).is_symlink())
    if odd:
        raise BundleError(f"bundle {bundle_dir}: {', '.join(odd)} is not a plain file; re-copy the bundle")


def _golden(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    with np.load(path) as golden:
        if not {"inputs", "outputs"} <= set(golden.files):
            raise BundleError(f"bundle file {path} lacks 'inputs' or 'outputs' (has {golden.files}); "
                              "re-export the bundle")
        inputs, outputs = golden["inputs"], golden["outputs"]
    if len(inputs) == 0 or len(inputs) != len(outputs):
        raise BundleError(f"bundle file {path} holds {len(inputs)} inputs and {len(outputs)} outputs; "
                          "re-export the bundle")
    return inputs, outputs


def _plain_name(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..", MODEL_JSON, SEAL)
            and "/" not in name and "\\" not in name and "\0" not in name and not os.path.isabs(name))


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _get(d, key):
    return d.get(key) if isinstance(d, dict) else None
