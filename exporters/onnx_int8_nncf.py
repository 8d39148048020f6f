"""FP32 ONNX -> INT8 Q/DQ ONNX with NNCF's post-training quantization (ONNX backend).

Same contract as `exporters.onnx_int8.quantize_onnx`, so the pipeline and the accuracy-aware
search can use either. NNCF adds bias correction (a per-channel shift that undoes the mean
error quantization introduces) and its own overflow fix, the counterpart of ORT's reduce_range.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Iterable

from calibration.adapters import NNCF_MISSING, nncf_dataset
from calibration.source import CalibrationSource
from exporters.onnx_int8 import (
    CalibrationMethod,
    QuantScheme,
    check_node_names,
    choose_scheme,
    keep_layers_float,
    parse_enum,
    qdq_summary,
    single_input_name,
    unsigned_activations,
)
from runtimes.environment import cpu_has_vnni
from runtimes.errors import Unavailable


class NNCFUnavailable(ImportError, Unavailable):
    """quantize.method: nncf where NNCF is not installed: the CLI prints the fix and exits 8
    (an ImportError too, for callers that already catch that)."""


def nncf_unavailable() -> str | None:
    """None when NNCF can be imported, else the reason and the fix."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        return NNCF_MISSING
    return None


def require_nncf() -> None:
    """Raise NNCFUnavailable (exit 8, one line) when quantize.method 'nncf' cannot run here."""
    reason = nncf_unavailable()
    if reason:
        raise NNCFUnavailable(f"quantize.method 'nncf': {reason}, or set quantize.method: onnxruntime")


def _scheme_settings(scheme: QuantScheme):
    """NNCF preset and overflow fix for a scheme; NNCF always quantizes weights as signed int8."""
    import nncf
    from nncf.quantization.advanced_parameters import OverflowFix

    table = {
        QuantScheme.U8S8: (nncf.QuantizationPreset.MIXED, OverflowFix.DISABLE),
        QuantScheme.U8S8_REDUCE_RANGE: (nncf.QuantizationPreset.MIXED, OverflowFix.ENABLE),
        QuantScheme.S8S8: (nncf.QuantizationPreset.PERFORMANCE, OverflowFix.DISABLE),
    }
    if scheme not in table:
        raise ValueError(
            f"quantization scheme {scheme.value!r} is not available with NNCF (its weights are signed int8); "
            f"use one of {[s.value for s in table]} or quantizer 'onnxruntime'"
        )
    return table[scheme]


def _range_estimator(method: CalibrationMethod):
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    table = {
        CalibrationMethod.MINMAX: RangeEstimatorParametersSet.MINMAX,
        # NNCF's quantile estimator is its percentile calibration (mean of per-sample quantiles).
        CalibrationMethod.PERCENTILE: RangeEstimatorParametersSet.MEAN_QUANTILE,
    }
    if method not in table:
        raise ValueError(
            f"calibration method {method.value!r} is not available with NNCF's ONNX backend; "
            f"use one of {[m.value for m in table]} or quantizer 'onnxruntime'"
        )
    return table[method]


def quantize_onnx_nncf(
    fp32_path: Path | str,
    out_path: Path | str,
    source: CalibrationSource,
    method: CalibrationMethod | str = "minmax",
    per_channel: bool = True,
    nodes_to_exclude: Iterable[str] = (),
    scheme: QuantScheme | str | None = None,
    calibration_cache: Path | str | None = None,
    fast_bias_correction: bool = True,
) -> tuple[Path, dict]:
    """Quantize an FP32 ONNX model to a Q/DQ INT8 ONNX with `nncf.quantize` (bias correction on).

    `fast_bias_correction=False` selects NNCF's slower, more exact bias correction. Layers named in
    `nodes_to_exclude` go to NNCF's ignored scope. `calibration_cache` is accepted for the common
    signature; NNCF's ONNX backend has no range cache, so every call calibrates. Returns (path, info).
    """
    require_nncf()
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    t0 = time.perf_counter()
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise FileNotFoundError(f"FP32 ONNX model {fp32_path} does not exist; export the model first")
    method = parse_enum(CalibrationMethod, method, "calibration method")
    chosen, scheme_reason = choose_scheme(scheme)
    preset, overflow_fix = _scheme_settings(chosen)
    estimator = _range_estimator(method)

    model = onnx.load(str(fp32_path))
    excluded = check_node_names(model, nodes_to_exclude)
    dataset = nncf_dataset(source, single_input_name(model))
    advanced = AdvancedQuantizationParameters(
        overflow_fix=overflow_fix,
        activations_range_estimator_params=estimator,
        weights_quantization_params=QuantizationParameters(per_channel=per_channel),
        # One scale per activation tensor: what ONNX Runtime's QLinearConv and TensorRT accept.
        # NNCF's CPU default gives a depthwise convolution's input a scale per channel, which
        # OpenVINO runs but which leaves both convolutions around it in float in ONNX Runtime.
        activations_quantization_params=QuantizationParameters(per_channel=False),
    )
    quantized = nncf.quantize(
        model,
        dataset,
        preset=preset,
        subset_size=len(source),
        fast_bias_correction=fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=excluded) if excluded else None,
        advanced_parameters=advanced,
    )

    # NNCF writes int8 activations where a range dips below zero; the u8 schemes' kernels want uint8.
    unsigned = unsigned_activations(quantized) if chosen is not QuantScheme.S8S8 else 0
    rewired = keep_layers_float(quantized, excluded)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".onnx", dir=out_path.parent)
    os.close(fd)
    try:
        onnx.save(quantized, tmp)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

    return out_path, {
        "quantizer": "nncf",
        "nncf": nncf.__version__,
        "method": method.value,
        "scheme": chosen.value,
        "scheme_reason": scheme_reason,
        "cpu_vnni": cpu_has_vnni(),
        "preset": preset.value,
        "overflow_fix": overflow_fix.value,
        "per_channel": per_channel,
        "bias_correction": "fast" if fast_bias_correction else "full",
        "excluded_nodes": excluded,
        "float_inputs_rewired": rewired,
        "activations_made_unsigned": unsigned,
        "calibration_samples": len(source),
        "calibration_fingerprint": source.fingerprint,
        "calibration_cache": "off" if calibration_cache is None else "not supported by NNCF: recalibrated",
        "seconds": round(time.perf_counter() - t0, 3),
        **qdq_summary(quantized),
    }
