"""Accuracy-aware INT8: quantize everything, and if top-1 drops more than the budget, keep the
most quantization-sensitive layers in float, one at a time, until it does not.

Sensitivity of a layer = how far the model's logits move from FP32 when only that layer is
quantized (every other Conv/Gemm/MatMul left in float). Measuring each layer alone, rather than
"everything but this layer", keeps the ranking honest when two layers are hostile: removing
either one alone would leave the output ruined by the other and both would score as harmless.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from calibration.source import CalibrationSource
from exporters.onnx_int8 import QUANTIZABLE_LAYER_TYPES, prepare_for_quantization
from runtimes import errors
from runtimes.execution import open_model
from runtimes.progress import progress

QuantizeFn = Callable[..., tuple[Path, dict]]
"""(fp32_path, out_path, source, *, nodes_to_exclude, calibration_cache) -> (path, info), e.g.
`exporters.onnx_int8.quantize_onnx` or a functools.partial of it with method/scheme set."""

log = logging.getLogger(__name__)


class QuantizationBudgetError(RuntimeError, errors.StageFailed):
    """No set of at most `max_excluded` float layers brings the INT8 drop within `max_drop`."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def quantizable_layers(model) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes, the layers a fallback can keep in float."""
    return [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_LAYER_TYPES and n.name]


def run_onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Logits of an ONNX model on `inputs` in ONNX Runtime, through the one execution path."""
    return open_model(path, "onnx").run(inputs)


def output_error(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(mean squared logit error relative to the FP32 logits' mean square, top-1 disagreement)."""
    mse = float(np.mean((candidate - reference) ** 2) / (np.mean(reference**2) + 1e-12))
    disagree = float(np.mean(candidate.argmax(-1) != reference.argmax(-1)))
    return mse, disagree


def _channel_axes(node, weight: np.ndarray) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of a layer's weight."""
    if node.op_type == "Conv":
        return 0, 1
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return (0, 1) if trans_b else (weight.ndim - 1, weight.ndim - 2)


def _weight_noise(node, w: np.ndarray, in_energy: np.ndarray | None) -> float:
    """Relative per-channel int8 rounding error of a weight, each input channel weighted by the
    energy of the activation it multiplies (a huge weight on an always-zero input costs nothing
    in FP32, but it sets the scale of every other weight in its channel)."""
    out_axis, in_axis = _channel_axes(node, w)
    w = np.moveaxis(w.astype(np.float64), (out_axis, in_axis), (0, 1))
    w = w.reshape(w.shape[0], w.shape[1], -1)
    scale = np.abs(w).max(axis=(1, 2), keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    err = w - np.round(w / scale) * scale
    energy = np.ones(w.shape[:2])
    if in_energy is not None and len(in_energy) % w.shape[1] == 0:
        groups = max(1, len(in_energy) // w.shape[1])
        per_group = w.shape[0] // groups
        for g in range(groups):  # grouped / depthwise conv: out channel o reads its group's inputs
            energy[g * per_group : (g + 1) * per_group] = in_energy[g * w.shape[1] : (g + 1) * w.shape[1]]
    return float((err**2 * energy[..., None]).sum() / ((w**2 * energy[..., None]).sum() + 1e-12))


def proxy_scores(prepared: Path, layers: list[str], inputs: np.ndarray) -> dict[str, float]:
    """Cheap per-layer error estimate from one FP32 pass over `inputs`: relative uint8 rounding
    noise of each layer's input activation (per-tensor min/max) plus that of its weights."""
    import onnx
    from onnx import numpy_helper

    import runtimes

    model = onnx.load(str(prepared))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    graph_input = next(i.name for i in model.graph.input if i.name not in inits)
    act_names = sorted({nodes[n].input[0] for n in layers} - set(inits) - {graph_input})
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, None) for a in act_names if a not in existing
    )
    session = runtimes.get("onnxruntime").load(model, "cpu")
    # Streaming statistics, so large models need not hold every activation of every sample.
    stats: dict[str, dict] = {}

    def observe(name: str, x: np.ndarray) -> None:
        st = stats.setdefault(name, {"min": np.inf, "max": -np.inf, "sq": 0.0, "n": 0, "ch1": 0.0, "chl": 0.0})
        x = x.astype(np.float64)
        st["min"], st["max"] = min(st["min"], float(x.min())), max(st["max"], float(x.max()))
        st["sq"] += float((x**2).sum())
        st["n"] += x.size
        if x.ndim >= 2:  # per-channel energy along axis 1 (Conv) and the last axis (Gemm/MatMul)
            st["ch1"] = st["ch1"] + (x**2).sum(axis=tuple(a for a in range(x.ndim) if a != 1))
            st["chl"] = st["chl"] + (x**2).reshape(-1, x.shape[-1]).sum(axis=0)

    for x in inputs:  # one sample at a time suits static and dynamic batch axes alike
        sample = x[None]
        observe(graph_input, sample)
        for name, value in zip(act_names, session.run_named(sample, act_names)):
            observe(name, value)

    scores = {}
    for layer in layers:
        node = nodes[layer]
        st = stats.get(node.input[0])
        score, in_energy = 0.0, None
        if st is not None:
            step = (st["max"] - min(st["min"], 0.0)) / 255.0
            score += step**2 / 12.0 / (st["sq"] / st["n"] + 1e-12)
            in_energy = np.asarray(st["ch1"] if node.op_type == "Conv" else st["chl"], dtype=np.float64)
            in_energy = in_energy if in_energy.ndim == 1 else None
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        if w is not None and w.ndim >= 2:
            score += _weight_noise(node, w, in_energy)
        scores[layer] = score
    return scores


def layer_sensitivity(
    prepared: Path, layers: list[str], source: CalibrationSource, quantize_fn: QuantizeFn,
    inputs: np.ndarray, reference: np.ndarray, work: Path, calibration_cache: Path,
) -> dict[str, dict]:
    """For each layer: quantize only it, and measure logit error and top-1 disagreement vs FP32."""
    out = {}
    for k, layer in enumerate(progress(layers, desc="quantize: sensitivity", unit="layers", log=log)):
        others = [name for name in layers if name != layer]
        path, _ = quantize_fn(
            prepared, work / f"only_{k}.onnx", source, nodes_to_exclude=others, calibration_cache=calibration_cache
        )
        mse, disagree = output_error(reference, run_onnx(path, inputs))
        out[layer] = {"sensitivity": mse, "disagreement": disagree}
        path.unlink()
    return out


def _rank_layers(
    prepared: Path, source: CalibrationSource, quantize_fn: QuantizeFn, inputs: np.ndarray,
    work: Path, cache: Path, max_candidates: int, report: dict,
) -> list[str]:
    """Candidate layers, most sensitive first; fills report["sensitivity"] (and "proxy" when used)."""
    import onnx

    layers = quantizable_layers(onnx.load(str(prepared), load_external_data=False))
    if len(layers) > max_candidates:  # measuring every layer of a big model costs one quantization each
        proxy = proxy_scores(prepared, layers, inputs)
        layers = sorted(layers, key=lambda n: -proxy[n])[:max_candidates]
        report["candidates_by_proxy"], report["proxy"] = True, proxy
    reference = run_onnx(prepared, inputs)
    sens = layer_sensitivity(prepared, layers, source, quantize_fn, inputs, reference, work, cache)
    report["sensitivity"] = sens
    return sorted(layers, key=lambda n: (-sens[n]["sensitivity"], layers.index(n)))


def format_table(report: dict) -> str:
    """The fallback steps as a plain-text table (layer, sensitivity, top-1 after, drop)."""
    lines = [f"  {'#':>2}  {'layer kept in float':<40} {'sensitivity':>12} {'top-1 after':>12} {'drop':>7}"]
    lines.append(f"  {0:>2}  {'(none: all layers INT8)':<40} {'':>12} {report['int8_accuracy']:>11.2f}% "
                 f"{report['fp32_accuracy'] - report['int8_accuracy']:>7.2f}")
    for k, step in enumerate(report["steps"], 1):
        lines.append(f"  {k:>2}  {step['layer']:<40} {step['sensitivity']:>12.4g} {step['accuracy']:>11.2f}% "
                     f"{step['drop']:>7.2f}")
    return "\n".join(lines)


def accuracy_aware_quantize(
    fp32_path: Path | str,
    out_dir: Path | str,
    source: CalibrationSource,
    evaluate: Callable[[Path], float],
    max_drop: float,
    quantize_fn: QuantizeFn,
    sensitivity_inputs: np.ndarray,
    max_excluded: int = 10,
    max_candidates: int = 60,
) -> tuple[Path, dict]:
    """INT8 Q/DQ ONNX whose top-1 (`evaluate`, in %) is within `max_drop` points of FP32.

    Keeps the most sensitive layers in float, cumulatively, up to `max_excluded` of them.
    Sensitivity is measured on `sensitivity_inputs` (N,3,H,W) for at most `max_candidates` layers
    (pre-ranked by a cheap proxy when there are more). Calibration runs once; later quantizations
    reuse its ranges. Returns (out_dir/model_int8.onnx, report); raises QuantizationBudgetError
    with the table of tried layers when the budget cannot be met.
    """
    if max_drop < 0:
        raise ValueError(f"max_drop {max_drop} must be >= 0 top-1 points (the tolerated FP32 -> INT8 loss)")
    if max_excluded < 0 or max_candidates < 1:
        raise ValueError(f"max_excluded {max_excluded} must be >= 0 and max_candidates {max_candidates} >= 1")
    t0 = time.perf_counter()
    fp32_path, out_dir = Path(fp32_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "model_int8.onnx"
    work = Path(tempfile.mkdtemp(prefix=".int8-search-", dir=out_dir))
    try:
        prepared, _ = prepare_for_quantization(fp32_path, work / "prepared.onnx")
        cache = work / "calibration_ranges.json"

        def quantize(excluded: list[str], name: str) -> tuple[Path, dict]:
            return quantize_fn(prepared, work / name, source, nodes_to_exclude=excluded, calibration_cache=cache)

        fp32_acc = float(evaluate(fp32_path))
        path, info = quantize([], "step_0.onnx")
        int8_acc = float(evaluate(path))
        report = {
            "fp32_accuracy": fp32_acc, "int8_accuracy": int8_acc, "max_drop": max_drop,
            "max_excluded": max_excluded, "quantizer": info, "steps": [], "excluded": [], "sensitivity": {},
        }
        chosen, chosen_acc = path, int8_acc
        if fp32_acc - int8_acc > max_drop:
            ranked = _rank_layers(
                prepared, source, quantize_fn, sensitivity_inputs, work, cache, max_candidates, report
            )
            chosen = None
            candidates = progress(ranked[:max_excluded], desc="quantize: float fallback", unit="layers", log=log)
            for k, layer in enumerate(candidates, 1):
                excluded = ranked[:k]
                path, info = quantize(excluded, f"step_{k}.onnx")
                acc = float(evaluate(path))
                sens = report["sensitivity"][layer]
                report["steps"].append({"layer": layer, **sens, "accuracy": acc, "drop": fp32_acc - acc})
                if fp32_acc - acc <= max_drop:
                    chosen, chosen_acc, report["excluded"], report["quantizer"] = path, acc, excluded, info
                    break
            if chosen is None:
                report["seconds"] = round(time.perf_counter() - t0, 3)
                raise QuantizationBudgetError(
                    f"INT8 top-1 drop stays above max_drop {max_drop:.2f} points with up to "
                    f"{min(max_excluded, len(ranked))} of the most sensitive layers kept in float "
                    f"(FP32 top-1 {fp32_acc:.2f}%):\n{format_table(report)}\n"
                    f"Raise max_drop or max_excluded (now {max_excluded}), or calibrate on more or "
                    f"more representative data.",
                    report,
                )
        report["final_accuracy"], report["final_drop"] = chosen_acc, fp32_acc - chosen_acc
        os.replace(chosen, final)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        return final, report
    finally:
        shutil.rmtree(work, ignore_errors=True)
