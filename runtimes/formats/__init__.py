"""Model formats, one handler each: the one place that knows what is true of a format's files.

    formats.get("onnx").static_batch(path)      formats.for_file(Path("m.xml")).name == "openvino"

Importing this package imports no model library; handlers load onnx or openvino when asked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runtimes.formats import onnx_format, openvino_format, tensorrt_format, torch_format
from runtimes.formats.base import FormatHandler

FORMATS: dict[str, FormatHandler] = {
    h.name: h for h in (torch_format.HANDLER, onnx_format.HANDLER, openvino_format.HANDLER,
                        tensorrt_format.HANDLER)
}


def get(fmt: Any) -> FormatHandler:
    """The handler of `fmt`: a name ("onnx") or a str-valued enum member."""
    name = str(getattr(fmt, "value", fmt)).lower()
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown model format {name!r}; known formats: {', '.join(FORMATS)}") from None


def for_file(path: Path) -> FormatHandler:
    """The handler whose file suffix `path` has (a checkpoint folder is torch)."""
    path = Path(path)
    if path.is_dir():
        return FORMATS["torch"]
    for handler in FORMATS.values():
        if path.suffix.lower() in handler.suffixes:
            return handler
    known = ", ".join(s for h in FORMATS.values() for s in h.suffixes)
    raise ValueError(f"{path.name}: no model format has the suffix {path.suffix!r} (known: {known})")


__all__ = ["FORMATS", "FormatHandler", "for_file", "get"]
