"""Numeric precision of an artifact, in the lowest layer so exporters, bundle checks on a device
and the pipeline share one enum (exporters.spec re-exports it)."""
from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """Numeric precision of an exported artifact; int8 means a Q/DQ (explicitly quantized) graph."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @classmethod
    def parse(cls, value: "Precision | str") -> "Precision":
        """Accept an enum member or its string ('fp32', 'fp16', 'int8'), with a clear error otherwise."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise ValueError(f"precision {value!r} is not one of {known}") from None
