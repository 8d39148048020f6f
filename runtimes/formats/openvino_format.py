"""OpenVINO IR: model.xml with its weights in model.bin beside it; preprocessing in the IR's
rt_info (and the <stem>.json sidecar the exporter writes); served by OpenVINO."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtimes.formats.base import FormatHandler

RT_INFO_PATH = ["edgeship", "preprocessing"]


def _model(path: Path):
    import openvino as ov
    return ov.Core().read_model(str(path))


class OpenVinoFormat(FormatHandler):
    name = "openvino"
    suffixes = (".xml",)
    scoring_runtime = "openvino"

    def model_files(self, path: Path) -> list[Path]:
        path = Path(path)
        return [path, path.with_suffix(".bin")]

    def static_batch(self, path: Path) -> int | None:
        dim = _model(path).inputs[0].get_partial_shape()[0]
        return dim.get_length() if dim.is_static else None

    def read_preprocessing(self, path: Path) -> dict | None:
        model = _model(path)
        if not model.has_rt_info(RT_INFO_PATH):
            return None
        return json.loads(model.get_rt_info(RT_INFO_PATH).astype(str))

    def io_signature(self, path, golden_in: np.ndarray | None = None,
                     golden_out: np.ndarray | None = None):
        model = _model(path)

        def describe(ports):
            return [{"name": p.get_any_name(), "shape": [d.get_length() if d.is_static else None
                                                         for d in p.get_partial_shape()]} for p in ports]
        return describe(model.inputs), describe(model.outputs)


HANDLER = OpenVinoFormat()
