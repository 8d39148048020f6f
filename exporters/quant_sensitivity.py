"""Which layers to keep in float when INT8 costs accuracy: ranked where the damage shows.

The images whose top-1 flips away from the FP32 model's (and those that nearly do) carry the
whole loss; each candidate layer is kept in float on top of the layers already reverted, and
ranked by how much FP32 agreement and FP32 lead it gives back on those images. A cheap proxy
(activation and weight rounding noise from one FP32 pass) cuts big models to a candidate list
first. Node names are mapped to the torch modules they came from, so a user can read the table.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from exporters.onnx_int8 import QUANTIZABLE_LAYER_TYPES
from runtimes.execution import open_model
from runtimes.progress import progress

log = logging.getLogger(__name__)


def quantizable_layers(model) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes, the layers a fallback can keep in float."""
    return [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_LAYER_TYPES and n.name]


def run_onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Logits of an ONNX model on `inputs` in ONNX Runtime, through the one execution path."""
    return open_model(path, "onnx").run(inputs)


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


def module_names(model) -> dict[str, str]:
    """ONNX node name -> the torch module it came from (e.g. "blocks.3.1.conv_pw"), read from the
    name scopes the torch.onnx exporter records on each node; nodes without them are left out.
    A Conv with BatchNorm folded in is named by both modules' common parent and the BN."""
    import ast
    out = {}
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        if len(scopes) >= 2 and scopes[-2]:
            fused = " (conv+bn fused)" if "BatchNorm" in props.get("pkg.onnxscript.rewriter.rule_name", "") else ""
            out[node.name] = scopes[-2] + fused
    return out


def margins(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each sample's lead of class `classes[i]` over its strongest rival, in units of the sample's
    logit range (negative: the prediction has flipped away from that class)."""
    picked = logits[np.arange(len(logits)), classes]
    rivals = logits.copy()
    rivals[np.arange(len(logits)), classes] = -np.inf
    spread = logits.max(axis=1) - logits.min(axis=1) + 1e-12
    return (picked - rivals.max(axis=1)) / spread


def problem_images(reference: np.ndarray, quantized: np.ndarray, at_least: int = 16) -> np.ndarray:
    """Indices of the images where INT8 hurts: every one whose top-1 flipped away from the FP32
    model's, then those whose FP32 top-1 lead shrank most, up to `at_least` in all.

    With a loss of two photos out of 150 the error is spread thin over every layer, and an average
    over random images does not see it; on the images that flip (or nearly do) it is all there."""
    classes = reference.argmax(1)
    loss = margins(reference, classes) - margins(quantized, classes)
    flipped = np.flatnonzero(quantized.argmax(1) != classes)
    rest = [i for i in np.argsort(-loss) if quantized[i].argmax() == classes[i] and loss[i] > 0]
    return np.concatenate([flipped, rest[: max(0, at_least - len(flipped))]]).astype(int)


def revert_gains(
    layers: list[str], excluded: list[str], quantize: Callable[[list[str], str], Path],
    inputs: np.ndarray, reference: np.ndarray, current: np.ndarray,
) -> dict[str, dict]:
    """For each candidate layer: keep it in float on top of `excluded` and measure, on `inputs`
    (the problem images), how many of them agree with FP32 again and how much FP32 lead returns.

    This is NNCF's accuracy-control idea (rank by each layer's contribution where predictions
    changed), measured on FP32 agreement, so no labels are needed."""
    classes = reference.argmax(1)
    base_margin = float(margins(current, classes).mean())
    base_agree = int((current.argmax(1) == classes).sum())
    out = {}
    for k, layer in enumerate(progress(layers, desc="quantize: ranking layers", unit="layers", log=log)):
        path = quantize(excluded + [layer], f"revert_{k}.onnx")
        logits = run_onnx(path, inputs)
        path.unlink()
        out[layer] = {"gain": float(margins(logits, classes).mean()) - base_margin,
                      "recovered": int((logits.argmax(1) == classes).sum()) - base_agree}
    return out


def ranked(gains: dict[str, dict]) -> list[str]:
    """Layers by recovered agreement, then by recovered lead: the most useful revert first."""
    return sorted(gains, key=lambda n: (-gains[n]["recovered"], -gains[n]["gain"]))


def candidate_layers(prepared: Path, inputs: np.ndarray, max_candidates: int, report: dict) -> list[str]:
    """The first and last quantizable layers, then the others noisiest first by the cheap proxy,
    cut to `max_candidates` (each candidate costs a quantization per ranking); report["proxy"]
    keeps every layer's score.

    The ends are always candidates because the proxy, a layer's own rounding noise, cannot see
    how far an error travels: the first convolution reads raw pixels through 3 input channels
    (nothing averages its rounding out) and every later layer carries its error. On the default
    model, keeping the stem alone in float gave back 5.6 of the 7.1 points INT8 lost; the proxy
    ranked it 47th of 50."""
    import onnx

    layers = quantizable_layers(onnx.load(str(prepared), load_external_data=False))
    proxy = proxy_scores(prepared, layers, inputs)
    report["candidates_by_proxy"], report["proxy"] = len(layers) > max_candidates, proxy
    ends = list(dict.fromkeys(layers[:1] + layers[-1:]))[:max_candidates]
    return ends + sorted((n for n in layers if n not in ends), key=lambda n: -proxy[n])[:max_candidates - len(ends)]
