"""Exporters: one plain function per (source format, target format) edge.

Each exporter is `(src, out_dir, spec) -> Path`: it writes its artifact atomically, stores the
preprocessing metadata with it, and checks the artifact's outputs against its source on real
inputs before returning. Importing this package loads no heavy library (torch, onnx, OpenVINO,
TensorRT); each exporter imports what it needs when called.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from exporters import openvino_export, tensorrt_export
from exporters.onnx_export import export_torch_to_onnx
from exporters.openvino_export import export_onnx_to_openvino
from exporters.parity import ParityError, ParityResult, check_export, compare_logits
from exporters.spec import ExportError, ExportSpec, ExportUnavailable, Precision
from exporters.tensorrt_export import export_onnx_to_tensorrt
from runtimes import errors

Exporter = Callable[[Any, Path, ExportSpec], Path]

EXPORTERS: dict[tuple[str, str], Exporter] = {
    ("torch", "onnx"): export_torch_to_onnx,
    ("onnx", "openvino"): export_onnx_to_openvino,
    ("onnx", "tensorrt"): export_onnx_to_tensorrt,
}

# Edges that need something this machine may lack; each says why it cannot run (None: it can).
REQUIREMENTS: dict[tuple[str, str], Callable[[], str | None]] = {
    ("onnx", "openvino"): openvino_export.unavailable,
    ("onnx", "tensorrt"): tensorrt_export.unavailable,
}


class UnknownExportEdge(LookupError, errors.StageFailed):
    """No exporter is registered for the requested (source, target) formats."""


def _format_name(fmt: Any) -> str:
    # Accept plain strings and str-valued enums (e.g. the pipeline's artifact Format).
    return str(getattr(fmt, "value", fmt)).lower()


def unavailable(src_format: Any, dst_format: Any) -> str | None:
    """Why the exporter from `src_format` to `dst_format` cannot run here, or None."""
    check = REQUIREMENTS.get((_format_name(src_format), _format_name(dst_format)))
    return check() if check else None


def export(src: Any, src_format: Any, dst_format: Any, out_dir: Path, spec: ExportSpec) -> Path:
    """Export `src` from `src_format` to `dst_format` into `out_dir` with the registered exporter."""
    edge = (_format_name(src_format), _format_name(dst_format))
    exporter = EXPORTERS.get(edge)
    if exporter is None:
        known = ", ".join(f"{a}→{b}" for a, b in EXPORTERS)
        raise UnknownExportEdge(f"no exporter for {edge[0]}→{edge[1]}; known edges: {known}")
    return exporter(src, Path(out_dir), spec)


__all__ = [
    "EXPORTERS", "Exporter", "ExportError", "ExportSpec", "ExportUnavailable", "ParityError",
    "ParityResult", "Precision", "REQUIREMENTS", "UnknownExportEdge", "check_export", "compare_logits",
    "export", "unavailable",
]
