"""INT8 export parity is judged against the FP32 model an INT8 file was quantized from, not
against another runtime's rounding of the same Q/DQ file. Models come from tests/test_quantize.py."""
from __future__ import annotations

import pytest

from exporters.onnx_int8 import quantize_onnx
from test_quantize import PRE, run, world  # noqa: F401  (world: the module fixture)


def test_int8_parity_is_judged_against_fp32_not_another_runtimes_int8(world):
    """Without VNNI two correct runtimes round the same Q/DQ file differently; an INT8 artifact is
    held to what INT8 must preserve, the FP32 model's clear decisions."""
    from exporters.onnx_export import parity_against_onnx
    from exporters.parity import ParityError
    from exporters.spec import ExportSpec

    fp32 = world["paths"]["hostile1"]
    # ONNX Runtime's rounding of this Q/DQ file strays far from FP32 (the hostile conv's scale)
    rough, _ = quantize_onnx(fp32, world["tmp"] / "rough.onnx", world["source"])
    x = world["x_test"]
    exact = run(fp32, x)  # an INT8 runtime whose output happens to round exactly like FP32
    spec = ExportSpec(preprocessing=PRE, precision="int8", check_inputs=[x], reference=fp32)
    result = parity_against_onnx(rough, lambda batch: exact, spec, "synthetic_int8")
    assert result.passed and result.top1_agreement == 1.0
    spec.reference = None  # the old rule: against ONNX Runtime's INT8 rounding of the same file
    with pytest.raises(ParityError, match="parity check failed for synthetic_int8"):
        parity_against_onnx(rough, lambda batch: exact, spec, "synthetic_int8")
