"""ONNX files: one .onnx (weights embedded, or in <name>.onnx.data beside it for large models),
preprocessing in the graph's metadata_props; served by ONNX Runtime and OpenVINO."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtimes.formats.base import FormatHandler

PREPROCESSING_KEY = "edgeship.preprocessing"


def _proto(path: Path):
    import onnx
    return onnx.load(str(path), load_external_data=False)


class OnnxFormat(FormatHandler):
    name = "onnx"
    suffixes = (".onnx",)
    scoring_runtime = "onnxruntime"

    def model_files(self, path: Path) -> list[Path]:
        import onnx
        path = Path(path)
        locations = set()
        for tensor in _proto(path).graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(e.value for e in tensor.external_data if e.key == "location")
        return [path, *(path.parent / loc for loc in sorted(locations))]

    def static_batch(self, path: Path) -> int | None:
        graph = _proto(path).graph
        weights = {t.name for t in graph.initializer}
        first = next(i for i in graph.input if i.name not in weights)
        dim = first.type.tensor_type.shape.dim[0]
        return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None

    def read_preprocessing(self, path: Path) -> dict | None:
        for prop in _proto(path).metadata_props:
            if prop.key == PREPROCESSING_KEY:
                return json.loads(prop.value)
        return None

    def io_signature(self, path, golden_in: np.ndarray | None = None,
                     golden_out: np.ndarray | None = None):
        graph = _proto(path).graph
        weights = {t.name for t in graph.initializer}

        def describe(values):
            return [{"name": v.name, "shape": [d.dim_value if d.HasField("dim_value") else None
                                               for d in v.type.tensor_type.shape.dim]}
                    for v in values if v.name not in weights]
        return describe(graph.input), describe(graph.output)


def write_preprocessing(proto, preprocessing: dict) -> None:
    """Store `preprocessing` in an onnx.ModelProto's metadata_props, replacing an older entry."""
    for prop in list(proto.metadata_props):
        if prop.key == PREPROCESSING_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = PREPROCESSING_KEY, json.dumps(preprocessing, sort_keys=True)


HANDLER = OnnxFormat()
