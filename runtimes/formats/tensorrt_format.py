"""TensorRT engines: one serialized .engine, bound to the GPU and TensorRT version that built it;
preprocessing and build facts in the <stem>.json sidecar. Reading an engine needs TensorRT and a
GPU, so its batch range is the optimisation profile's business (the runtime says when a batch
falls outside it) and scoring feeds one image per call, which any profile accepts."""
from __future__ import annotations

from runtimes.formats.base import FormatHandler


class TensorRtFormat(FormatHandler):
    name = "tensorrt"
    suffixes = (".engine", ".plan")
    scoring_runtime = "tensorrt"
    max_scoring_batch = 1


HANDLER = TensorRtFormat()
