"""FP32 ONNX -> INT8 Q/DQ ONNX with ONNX Runtime static quantization.

The Q/DQ file is the one INT8 hand-off for ONNX Runtime, OpenVINO and TensorRT. The integer
scheme depends on where it will run: x86 CPUs without VNNI multiply u8 x s8 with a 16-bit
intermediate (vpmaddubsw) that can saturate, which has cost ResNet-50 several top-1 points;
7-bit weights (reduce_range) keep the pair sums in range. The choice is recorded and overridable.
"""
from __future__ import annotations

import enum
import inspect
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Iterable

from calibration.source import CalibrationSource
from runtimes.environment import cpu_has_vnni

QUANTIZABLE_LAYER_TYPES = ("Conv", "Gemm", "MatMul")
_PREPROCESSED_KEY, _PREPROCESSED_VALUE = "onnx.quant.pre_process", "onnxruntime.quant"


class CalibrationMethod(str, enum.Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class QuantScheme(str, enum.Enum):
    """Activation/weight integer types. u8s8: the ORT CPU default; u8s8_reduce_range: 7-bit
    weights for x86 without VNNI; u8u8: both unsigned; s8s8: symmetric int8 activations with
    zero point 0, the form TensorRT's explicit quantization accepts."""

    U8S8 = "u8s8"
    U8S8_REDUCE_RANGE = "u8s8_reduce_range"
    U8U8 = "u8u8"
    S8S8 = "s8s8"


def parse_enum(kind: type[enum.Enum], value, what: str):
    """A config string as `kind`, or an error naming the value and the choices."""
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).lower())
    except ValueError:
        raise ValueError(f"{what} {value!r} is not one of {[m.value for m in kind]}") from None


def choose_scheme(scheme: QuantScheme | str | None = None, cpuinfo: str | None = None) -> tuple[QuantScheme, str]:
    """The integer scheme to use and why: an explicit choice wins; else 7-bit weights on x86 without VNNI."""
    if scheme is not None:
        return parse_enum(QuantScheme, scheme, "quantization scheme"), "set explicitly"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return QuantScheme.U8S8, f"{machine} CPU: no u8s8 saturation issue"
    if cpu_has_vnni(cpuinfo):
        return QuantScheme.U8S8, "x86 CPU with VNNI: 8-bit products accumulate without saturation"
    return QuantScheme.U8S8_REDUCE_RANGE, "x86 CPU without VNNI: 7-bit weights avoid u8s8 saturation"


def _ort_types(scheme: QuantScheme):
    from onnxruntime.quantization import QuantType

    u8, s8, sym_w = QuantType.QUInt8, QuantType.QInt8, {"WeightSymmetric": True}
    table = {  # scheme -> (activation type, weight type, reduce_range, extra options)
        QuantScheme.U8S8: (u8, s8, False, sym_w),
        QuantScheme.U8S8_REDUCE_RANGE: (u8, s8, True, sym_w),
        QuantScheme.U8U8: (u8, u8, False, {"WeightSymmetric": False}),
        QuantScheme.S8S8: (s8, s8, False, {**sym_w, "ActivationSymmetric": True}),
    }
    return table[scheme]


def is_prepared(model) -> bool:
    """Whether `quant_pre_process` has already been applied to this ModelProto."""
    return any(p.key == _PREPROCESSED_KEY and p.value == _PREPROCESSED_VALUE for p in model.metadata_props)


def prepare_for_quantization(src: Path, dst: Path) -> tuple[Path, str]:
    """Run ORT's `quant_pre_process` (shape inference + the graph fusions ORT itself applies,
    e.g. Conv+BatchNorm) so calibration sees the graph the runtime executes.
    Returns (the model to quantize: `dst`, or `src` when already pre-processed; how it ran)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if is_prepared(onnx.load(str(src), load_external_data=False)):
        return src, "already pre-processed"
    try:
        quant_pre_process(str(src), str(dst))
        return dst, "quant_pre_process"
    except Exception as exc:  # symbolic shape inference fails on some exotic ops; ONNX's own still works
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst, f"quant_pre_process without symbolic shape inference ({type(exc).__name__}: {exc})"


def single_input_name(model) -> str:
    """The one graph input that is not an initializer (image classifiers take one tensor)."""
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"INT8 calibration expects a model with one input; this one has {names}")
    return names[0]


def check_node_names(model, names: Iterable[str], what: str = "nodes_to_exclude") -> list[str]:
    """`names` as a list, or an error listing the unknown ones (ORT would silently ignore them)."""
    names = list(names)
    known = {n.name for n in model.graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        layers = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_LAYER_TYPES]
        raise ValueError(f"{what} {unknown} are not nodes of the model; its Conv/Gemm/MatMul nodes are {layers}")
    return names


def keep_layers_float(model, names: Iterable[str]) -> list[str]:
    """Feed excluded layers their float input instead of its Q->DQ copy, in place; returns the
    rewired inputs as "node:input_index".

    An excluded Conv/Gemm reading a DequantizeLinear and writing to a QuantizeLinear is quantized
    anyway by ONNX Runtime's session optimizer (WeightBiasQuantization: per-tensor int8 weights),
    silently undoing the exclusion. The float input goes through a Clip to the Q's range instead:
    the QDQ quantizer folds Relu/Clip activations into that range, so the clamp must stay.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    names = set(names)
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    clipped: dict[str, str] = {}  # Q output -> clipped float tensor, shared by excluded readers
    rewired = []
    for node in list(model.graph.node):
        if node.name not in names:
            continue
        for k, tensor in enumerate(node.input):
            dq = producers.get(tensor)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or q.input[1] not in inits:
                continue
            scale = numpy_helper.to_array(inits[q.input[1]])
            zp_init = inits.get(q.input[2]) if len(q.input) > 2 else None
            zp = numpy_helper.to_array(zp_init) if zp_init is not None else np.zeros((), np.uint8)
            if scale.size != 1 or zp.size != 1:  # per-channel activations: leave as quantized
                continue
            if q.output[0] not in clipped:
                info = np.iinfo(zp.dtype)
                lo, hi = ((float(b) - float(zp.ravel()[0])) * float(scale.ravel()[0]) for b in (info.min, info.max))
                out = f"{q.input[0]}_float_range"
                if opset >= 11:
                    bounds = [numpy_helper.from_array(np.array(v, np.float32), f"{out}_{t}") for t, v in
                              (("min", lo), ("max", hi))]
                    model.graph.initializer.extend(bounds)
                    clip = helper.make_node("Clip", [q.input[0], bounds[0].name, bounds[1].name], [out], name=out)
                else:
                    clip = helper.make_node("Clip", [q.input[0]], [out], name=out, min=lo, max=hi)
                model.graph.node.insert(list(model.graph.node).index(node), clip)
                clipped[q.output[0]] = out
            node.input[k] = clipped[q.output[0]]
            rewired.append(f"{node.name}:{k}")
    _drop_dead_qdq(model)
    return rewired


def unsigned_activations(model) -> int:
    """Re-encode every int8 activation Q/DQ pair as uint8 (zero point + 128, same scale), in place;
    returns how many quantizers changed.

    Exact: each quantized value moves by 128 together with its zero point, over the same 256
    levels. NNCF writes int8 wherever a calibrated range dips below zero; ONNX Runtime's x86 CPU
    kernels fuse only uint8 activations with int8 weights into QLinearConv, so an int8 activation
    leaves its convolution in float, dequantizing the weights on every call. On an AVX2 CPU
    without VNNI, NNCF's efficientnet_lite0 ran 0.16x the speed of FP32 in ONNX Runtime; with
    unsigned (and per-tensor) activations all 49 convolutions fuse and it runs 1.3x.
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    typed = {v.name: v for v in model.graph.value_info}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    pairs = {}                                  # Q name -> (Q, its DQs, the zero points they read)
    for q in model.graph.node:
        zp = inits.get(q.input[2]) if q.op_type == "QuantizeLinear" and len(q.input) > 2 else None
        if zp is None or numpy_helper.to_array(zp).dtype != np.int8 or q.input[0] in inits:
            continue                            # a weight (constant input) or already unsigned
        dqs = readers.get(q.output[0], [])
        if dqs and all(d.op_type == "DequantizeLinear" and len(d.input) > 2 for d in dqs):
            pairs[q.name] = (q, dqs, {q.input[2], *(d.input[2] for d in dqs)})
    # A zero point may be shared (ONNX Runtime's quantizer shares one across a Reshape), but only
    # among pairs that all move: one read by anything else (a weight's DQ, say) keeps its pairs signed.
    while True:
        members = {id(n) for q, dqs, _ in pairs.values() for n in (q, *dqs)}
        stuck = [k for k, (_, _, names) in pairs.items()
                 if any(id(r) not in members for n in names for r in readers[n])]
        if not stuck:
            break
        for k in stuck:
            del pairs[k]
    moved = set()
    for q, _, names in pairs.values():
        for name in names - moved:
            values = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8), name))
            moved.add(name)
        for name in (*names, q.output[0]):
            if name in typed:                   # shape inference recorded the int8 type
                typed[name].type.tensor_type.elem_type = TensorProto.UINT8
    return len(pairs)


def _drop_dead_qdq(model) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads any more, and the scales only they used."""
    orphans: set[str] = set()
    while True:
        used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
        dead = [
            n for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            orphans.update(n.input)
            model.graph.node.remove(n)
    used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
    for init in [i for i in model.graph.initializer if i.name in orphans and i.name not in used]:
        model.graph.initializer.remove(init)


def qdq_summary(model) -> dict:
    """Counts that show the file really is quantized: Q/DQ nodes and layers fed quantized weights."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    quantized, float_layers = [], []
    for n in model.graph.node:
        if n.op_type not in QUANTIZABLE_LAYER_TYPES or len(n.input) < 2:
            continue
        w = producers.get(n.input[1])
        if w is not None and w.op_type == "DequantizeLinear":
            quantized.append(n.name)
        elif n.input[1] in inits:
            float_layers.append(n.name)
    ops = [n.op_type for n in model.graph.node]
    return {
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "quantized_layers": quantized,
        "float_layers": float_layers,
    }


def quantize_onnx(
    fp32_path: Path | str,
    out_path: Path | str,
    source: CalibrationSource,
    method: CalibrationMethod | str = "minmax",
    per_channel: bool = True,
    nodes_to_exclude: Iterable[str] = (),
    scheme: QuantScheme | str | None = None,
    calibration_cache: Path | str | None = None,
    batch_size: int = 1,
    percentile: float = 99.999,
) -> tuple[Path, dict]:
    """Quantize an FP32 ONNX model to a Q/DQ INT8 ONNX with ONNX Runtime static quantization.

    Weights are symmetric per-channel int8 (unless `per_channel=False`), activations as `scheme`
    says (default: chosen from the CPU, see `choose_scheme`). Layers named in `nodes_to_exclude`
    stay in float. `calibration_cache` (a JSON path) stores the calibrated ranges on the first
    call and reuses them on later calls for the same model and source, e.g. while searching for
    layers to keep in float. The FP32 file's metadata_props (the preprocessing) are kept. The
    output is written atomically. Returns (path, info).
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, quantize_static

    from calibration.adapters import ort_reader

    t0 = time.perf_counter()
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise FileNotFoundError(f"FP32 ONNX model {fp32_path} does not exist; export the model first")
    method = parse_enum(CalibrationMethod, method, "calibration method")
    chosen, reason = choose_scheme(scheme)
    act_type, weight_type, reduce_range, extra = _ort_types(chosen)
    extra = dict(extra)
    if method is CalibrationMethod.PERCENTILE:
        extra["CalibPercentile"] = float(percentile)
    ort_method = {
        CalibrationMethod.MINMAX: OrtMethod.MinMax,
        CalibrationMethod.ENTROPY: OrtMethod.Entropy,
        CalibrationMethod.PERCENTILE: OrtMethod.Percentile,
    }[method]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    cache_kwargs, cache_state = {}, "off"
    if calibration_cache is not None:
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            cache_kwargs["calibration_cache_path"] = str(calibration_cache)
            cache_state = "hit" if Path(calibration_cache).is_file() else "written"
        else:
            cache_state = f"unsupported by onnxruntime {onnxruntime.__version__}: recalibrated"

    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out_path.parent) as work:
        prepared, how = prepare_for_quantization(fp32_path, Path(work) / "prepared.onnx")
        model = onnx.load(str(prepared))
        excluded = check_node_names(model, nodes_to_exclude)
        input_name = single_input_name(model)
        reader = ort_reader(source, input_name, batch_size=batch_size)
        tmp_out = Path(work) / "model_int8.onnx"
        quantize_static(
            str(prepared), str(tmp_out), reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=act_type,
            weight_type=weight_type,
            nodes_to_exclude=excluded,
            calibrate_method=ort_method,
            extra_options=extra,
            **cache_kwargs,
        )
        quantized = onnx.load(str(tmp_out))
        rewired = keep_layers_float(quantized, excluded)
        if rewired:
            onnx.save(quantized, str(tmp_out))
        summary = qdq_summary(quantized)
        os.replace(tmp_out, out_path)

    info = {
        "quantizer": "onnxruntime", "onnxruntime": onnxruntime.__version__, "method": method.value,
        "scheme": chosen.value, "scheme_reason": reason, "cpu_vnni": cpu_has_vnni(),
        "activation_type": act_type.name, "weight_type": weight_type.name, "reduce_range": reduce_range,
        "per_channel": per_channel, "excluded_nodes": excluded, "float_inputs_rewired": rewired,
        "preprocess": how, "calibration_samples": len(source), "calibration_fingerprint": source.fingerprint,
        "calibration_cache": cache_state, "seconds": round(time.perf_counter() - t0, 3),
        **summary,
    }
    return out_path, info
