"""What an export should produce: one typed spec shared by every exporter edge.

The pipeline's export stage builds one `ExportSpec` per artifact and hands it to the exporter
looked up in `exporters.EXPORTERS`. Strings from configs become enums here, so nothing deeper
compares strings.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from calibration.preprocess import Preprocessing
from runtimes import errors
from runtimes.precision import Precision  # noqa: F401  (re-exported: exporters.spec.Precision)

PREPROCESSING_KEY = "edgeship.preprocessing"  # ONNX metadata_props key; rt_info path in OpenVINO


class ExportError(RuntimeError, errors.StageFailed):
    """An export ran but produced something unusable (parse failure, missing file, wrong ops)."""


class ExportUnavailable(RuntimeError, errors.Unavailable):
    """The export cannot run on this machine (library or device missing); `reason` says why and how to fix."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ExportSpec:
    """Options for one export. Fields an edge does not use are ignored by it.

    `check_inputs` are real, preprocessed NCHW float32 batches used for the parity check after
    writing; when None a seeded normal batch of the preprocessing's input shape is used.
    """

    preprocessing: Preprocessing
    precision: Precision = Precision.FP32
    opset: int = 18
    dynamic_batch: bool = False
    batch_size: int = 1          # the fixed batch when not dynamic; TensorRT's opt batch when dynamic
    max_batch_size: int = 32     # upper end of TensorRT's optimization profile when dynamic
    name: str = "model"          # file stem for in-memory sources (torch); file sources keep their stem
    check_inputs: list[np.ndarray] | None = field(default=None, repr=False, compare=False)
    check_seed: int = 0
    # The FP32 ONNX an INT8 source was quantized from. An INT8 artifact is checked against it
    # (what INT8 must preserve), not against another runtime's INT8 rounding of the same Q/DQ
    # file: without VNNI, two correct runtimes round some near-ties differently.
    reference: Path | None = None
    # TensorRT builder options.
    optimization_level: int = 3
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    use_trtexec: bool = False
    engine_cache: Path | None = None

    def __post_init__(self) -> None:
        self.precision = Precision.parse(self.precision)
        if not 7 <= int(self.opset) <= 23:
            raise ValueError(f"export opset {self.opset} is outside the supported range 7..23")
        if self.batch_size < 1 or self.max_batch_size < self.batch_size:
            raise ValueError(
                f"export batch_size {self.batch_size} / max_batch_size {self.max_batch_size}: "
                "need 1 <= batch_size <= max_batch_size"
            )
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"tensorrt optimization_level {self.optimization_level} must be in 0..5")
        if self.workspace_mb < 1:
            raise ValueError(f"tensorrt workspace_mb {self.workspace_mb} must be at least 1")
        self.timing_cache = Path(self.timing_cache) if self.timing_cache else None
        self.engine_cache = Path(self.engine_cache) if self.engine_cache else None

    def tagged_preprocessing(self) -> Preprocessing:
        """The preprocessing metadata to store with the artifact, stamped with this export's precision."""
        return self.preprocessing.with_(precision=self.precision.value)

    def parity_batches(self) -> list[np.ndarray]:
        """The batches the parity check feeds to both models: the given real ones, or a seeded one."""
        if self.check_inputs:
            expected = self.preprocessing.input_shape(1)[1:]
            for i, batch in enumerate(self.check_inputs):
                if np.ndim(batch) != 4 or tuple(np.shape(batch)[1:]) != expected:
                    raise ValueError(f"export check_inputs[{i}] has shape {np.shape(batch)}; expected "
                                     f"(N, {', '.join(map(str, expected))}) from the preprocessing")
            return [np.ascontiguousarray(b, dtype=np.float32) for b in self.check_inputs]
        rng = np.random.default_rng(self.check_seed)
        shape = self.preprocessing.input_shape(max(8, self.batch_size))
        return [rng.standard_normal(shape).astype(np.float32)]


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A scratch folder inside `out_dir`, removed afterwards whatever happens.

    Exporters write there and move finished files into place with `os.replace` (atomic on one
    filesystem), so a killed export never leaves a half-written artifact under its final name.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, final: Path) -> Path:
    """Move a finished file into place atomically; refuse an empty file (a failed write)."""
    if not staged.is_file() or staged.stat().st_size == 0:
        raise ExportError(f"export wrote no data to {staged.name}: expected a non-empty file for {final}")
    os.replace(staged, final)
    return final
