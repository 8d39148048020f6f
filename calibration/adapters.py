"""Adapters from a CalibrationSource to what each quantizer consumes.

ONNX Runtime wants a `CalibrationDataReader` (get_next / rewind), NNCF wants an
`nncf.Dataset(items, transform)`. Both read the same preprocessed tensors, so every
quantizer calibrates on exactly the same inputs. The libraries are imported on use.
"""
from __future__ import annotations

import numpy as np

from calibration.source import CalibrationSource

NNCF_MISSING = "NNCF is not installed; pip install 'edgeship[nncf]'"


def ort_reader(source: CalibrationSource, input_name: str, batch_size: int = 1):
    """An `onnxruntime.quantization.CalibrationDataReader` over the source's tensors.

    Yields `{input_name: (b, 3, H, W) float32}` batches (the last one may be smaller), then None;
    `rewind()` starts over. Use batch_size > 1 only for models with a dynamic batch axis.
    """
    from onnxruntime.quantization import CalibrationDataReader

    if batch_size < 1:
        raise ValueError(f"calibration batch_size {batch_size} must be >= 1")

    class SourceReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.tensors = source.tensors()
            self.starts = list(range(0, len(self.tensors), batch_size))
            self.start_index, self.end_index = 0, len(self.starts)
            self.cursor = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            k = self.start_index + self.cursor
            if k >= self.end_index:
                return None
            self.cursor += 1
            s = self.starts[k]
            return {input_name: self.tensors[s : s + batch_size]}

        def rewind(self) -> None:
            self.cursor = 0

        def __len__(self) -> int:
            return len(self.starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            # ORT's strided calibration (CalibStridedMinMax) reads the batches in windows.
            self.start_index, self.end_index = start_index, min(end_index, len(self.starts))
            self.cursor = 0

    return SourceReader()


def nncf_dataset(source: CalibrationSource, input_name: str):
    """An `nncf.Dataset` over the sampled images giving `{input_name: (1, 3, H, W) float32}` per item,
    the input form NNCF's ONNX backend feeds to ONNX Runtime."""
    try:
        import nncf
    except ImportError as exc:
        raise ImportError(NNCF_MISSING) from exc

    source.tensors()  # materialise once (or load from the cache) so transform() is a slice

    def transform(position: int) -> dict[str, np.ndarray]:
        return {input_name: source.transform(position)}

    return nncf.Dataset(list(source.data), transform)
