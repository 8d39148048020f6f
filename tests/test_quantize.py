"""INT8 Q/DQ quantization (ONNX Runtime and NNCF) and the accuracy-aware layer fallback.

A tiny CNN is trained for a few hundred milliseconds on scikit-learn's digits (8x8 upscaled to
16x16) and exported with the dynamo-based torch.onnx exporter. "Hostile" variants get one extra,
always-zero input channel in a conv whose weights are 1000 there: FP32 outputs are unchanged,
but each output channel's int8 scale becomes 1000/127, so every real weight rounds to zero.
"""
from __future__ import annotations

import functools
import json
import itertools
import platform

import numpy as np
import pytest
from PIL import Image

from calibration.preprocess import Preprocessing
from calibration.source import CalibrationSource
from exporters.onnx_int8 import QuantScheme, choose_scheme, quantize_onnx
from exporters.quant_search import accuracy_aware_quantize, format_table
from runtimes.environment import cpu_has_vnni

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

PRE = Preprocessing(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), labels=tuple("0123456789"))
N_TRAIN = 1400  # digits 0..1399 train and calibrate; 1400..1796 are held out for scoring


class DigitsSet:
    """A slice of the scikit-learn handwritten digits as an ImageSet."""

    def __init__(self, positions):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self._images = digits.images
        self.positions = list(positions)
        self.ids = [f"digits:{p}" for p in self.positions]
        self.targets = [int(digits.target[p]) for p in self.positions]

    def image(self, i: int) -> Image.Image:
        return Image.fromarray((self._images[self.positions[i]] * (255.0 / 16.0)).astype(np.uint8)).convert("RGB")


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(256, 10),
    )


def with_hostile_convs(model: nn.Sequential, hostile: set[int]) -> nn.Sequential:
    """A copy computing the same function in FP32 in which convs number `hostile` (1-based order
    among convs, never the first) read one extra always-zero channel with weight 1000."""
    layers = list(model)
    conv_at = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    new = []
    for k, i in enumerate(conv_at):
        conv = layers[i]
        w, b = conv.weight.detach().clone(), conv.bias.detach().clone()
        if k in hostile:  # extra input channel: zero in FP32, but it sets every channel's int8 scale
            col = torch.zeros(w.shape[0], 1, *w.shape[2:])
            col[:, 0, 1, 1] = 1000.0
            w = torch.cat([w, col], dim=1)
        if k + 1 in hostile:  # extra output channel that is exactly zero, for the next conv to read
            w = torch.cat([w, torch.zeros(1, *w.shape[1:])])
            b = torch.cat([b, torch.zeros(1)])
        new_conv = nn.Conv2d(w.shape[1], w.shape[0], 3, stride=conv.stride, padding=conv.padding)
        new_conv.weight.data, new_conv.bias.data = w, b
        new.append((i, new_conv))
    for i, m in new:
        layers[i] = m
    return nn.Sequential(*layers).eval()


def export(model: nn.Module, path) -> None:
    example = torch.zeros(1, 3, 16, 16)
    torch.onnx.export(
        model, (example,), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
    )


def run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def preprocessing_meta(path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["edgeship.preprocessing"])


def hostile_node_names(path) -> set[str]:
    model = onnx.load(str(path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        n.name for n in model.graph.node
        if n.op_type == "Conv" and n.input[1] in weights and np.abs(weights[n.input[1]]).max() >= 500
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Trained tiny CNN exported three ways (plain, one hostile conv, two), with data to score them."""
    tmp = tmp_path_factory.mktemp("int8")
    train, held_out = DigitsSet(range(N_TRAIN)), DigitsSet(range(N_TRAIN, 1797))
    everything = CalibrationSource.from_imageset(train, PRE, size=N_TRAIN, seed=0)
    x_train = torch.from_numpy(everything.tensors())
    y_train = torch.tensor([train.targets[p] for p in everything.data])
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(200):
        idx = torch.randint(0, N_TRAIN, (64,))
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    paths = {"plain": tmp / "plain.onnx", "hostile1": tmp / "hostile1.onnx", "hostile2": tmp / "hostile2.onnx"}
    export(model, paths["plain"])
    proto = onnx.load(str(paths["plain"]))  # the preprocessing travels in metadata_props; INT8 must keep it
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgeship.preprocessing", json.dumps(PRE.to_dict())
    onnx.save(proto, str(paths["plain"]))
    export(with_hostile_convs(model, {1}), paths["hostile1"])
    export(with_hostile_convs(model, {1, 2}), paths["hostile2"])
    x_test = np.stack([PRE(held_out.image(i)) for i in range(len(held_out.ids))]).astype(np.float32)
    y_test = np.array(held_out.targets)
    return {
        "tmp": tmp, "paths": paths, "x_test": x_test, "y_test": y_test, "model": model,
        "source": CalibrationSource.from_imageset(train, PRE, size=64, seed=0),
        "sens_inputs": CalibrationSource.from_imageset(train, PRE, size=48, seed=1).tensors(),
    }


def correct(world, path) -> np.ndarray:
    return run(path, world["x_test"]).argmax(1) == world["y_test"]


def top1(world, path) -> float:
    return 100.0 * float(np.mean(correct(world, path)))


def agreement(world, a, b) -> float:
    return float(np.mean(run(a, world["x_test"]).argmax(1) == run(b, world["x_test"]).argmax(1)))


def test_trained_model_and_hostile_variants_agree_in_fp32(world):
    p = world["paths"]
    assert top1(world, p["plain"]) >= 85.0
    ref = run(p["plain"], world["x_test"])
    for name in ("hostile1", "hostile2"):
        np.testing.assert_allclose(run(p[name], world["x_test"]), ref, rtol=1e-4, atol=1e-4)
    assert len(hostile_node_names(p["hostile1"])) == 1 and len(hostile_node_names(p["hostile2"])) == 2


def test_vnni_detection_and_scheme_choice():
    assert cpu_has_vnni("processor : 0\nflags : fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu_has_vnni("flags : fpu avx2 avx_vnni")
    assert not cpu_has_vnni("flags : fpu sse avx2 fma")
    assert choose_scheme("s8s8", cpuinfo="flags : avx2") == (QuantScheme.S8S8, "set explicitly")
    with pytest.raises(ValueError, match="quantization scheme 'u4s4' is not one of"):
        choose_scheme("u4s4")
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert choose_scheme(None, cpuinfo="flags : fpu avx2")[0] is QuantScheme.U8S8_REDUCE_RANGE
        assert choose_scheme(None, cpuinfo="flags : avx2 avx512_vnni")[0] is QuantScheme.U8S8


def _weight_ints(path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantized = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    return [w for w in quantized if w.dtype == np.int8]  # weights; int32 tensors are biases


def test_quantize_onnx_produces_qdq_that_agrees_with_fp32(world):
    out_dir = world["tmp"] / "ort"
    path, info = quantize_onnx(world["paths"]["plain"], out_dir / "int8.onnx", world["source"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert len(info["quantized_layers"]) == 4 and info["float_layers"] == []
    assert info["scheme"] == choose_scheme(None)[0].value and info["cpu_vnni"] == cpu_has_vnni()
    assert info["method"] == "minmax" and info["per_channel"] is True and info["weight_type"] == "QInt8"
    assert info["preprocess"] == "quant_pre_process" and info["calibration_samples"] == 64
    assert agreement(world, world["paths"]["plain"], path) >= 0.90
    assert preprocessing_meta(path) == PRE.to_dict()
    assert [p.name for p in out_dir.iterdir()] == ["int8.onnx"]  # atomic write leaves no temp files


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_run(world, method):
    path, info = quantize_onnx(world["paths"]["plain"], world["tmp"] / f"{method}.onnx", world["source"], method=method)
    assert info["method"] == method
    assert agreement(world, world["paths"]["plain"], path) >= 0.90


def test_reduce_range_uses_seven_bit_weights_and_s8s8_zero_points(world):
    path, info = quantize_onnx(world["paths"]["plain"], world["tmp"] / "u8s8.onnx", world["source"], scheme="u8s8")
    assert info["reduce_range"] is False and info["activation_type"] == "QUInt8"
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in _weight_ints(path)) == 127

    path, info = quantize_onnx(
        world["paths"]["plain"], world["tmp"] / "rr.onnx", world["source"], scheme="u8s8_reduce_range"
    )
    assert info["reduce_range"] is True and info["scheme_reason"] == "set explicitly"
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in _weight_ints(path)) <= 64
    assert agreement(world, world["paths"]["plain"], path) >= 0.90

    path, info = quantize_onnx(world["paths"]["plain"], world["tmp"] / "s8.onnx", world["source"], scheme="s8s8")
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_excluded_node_stays_float_and_unknown_names_are_refused(world):
    plain = world["paths"]["plain"]
    first_conv = next(n.name for n in onnx.load(str(plain)).graph.node if n.op_type == "Conv")
    path, info = quantize_onnx(plain, world["tmp"] / "ex.onnx", world["source"], nodes_to_exclude=[first_conv])
    assert info["float_layers"] == [first_conv] and info["excluded_nodes"] == [first_conv]
    assert len(info["quantized_layers"]) == 3
    with pytest.raises(ValueError, match=r"nodes_to_exclude \['no_such_conv'\] are not nodes"):
        quantize_onnx(plain, world["tmp"] / "bad.onnx", world["source"], nodes_to_exclude=["no_such_conv"])


def test_excluded_layer_stays_float_under_ort_session_optimizations(world):
    # ORT's WeightBiasQuantization pass would re-quantize a float Conv sitting between DQ and Q
    # (per-tensor int8), which wrecks this hostile layer; the exporter must prevent that.
    (hostile,) = hostile_node_names(world["paths"]["hostile1"])
    path, info = quantize_onnx(
        world["paths"]["hostile1"], world["tmp"] / "h_ex.onnx", world["source"], nodes_to_exclude=[hostile]
    )
    assert info["float_inputs_rewired"] == [f"{hostile}:0"] and info["float_layers"] == [hostile]
    nodes = onnx.load(str(path)).graph.node
    producer = {o: n for n in nodes for o in n.output}
    conv = next(n for n in nodes if n.name == hostile)
    # The QDQ quantizer folded the preceding Relu into the Q's range; the Clip keeps that clamp.
    assert producer[conv.input[0]].op_type == "Clip"
    assert top1(world, world["paths"]["hostile1"]) - top1(world, path) <= 1.0


def test_calibration_cache_is_reused(world):
    cache = world["tmp"] / "ranges.json"
    plain, src = world["paths"]["plain"], world["source"]
    a, info_a = quantize_onnx(plain, world["tmp"] / "c1.onnx", src, calibration_cache=cache)
    b, info_b = quantize_onnx(plain, world["tmp"] / "c2.onnx", src, calibration_cache=cache)
    assert cache.is_file() and (info_a["calibration_cache"], info_b["calibration_cache"]) == ("written", "hit")
    assert a.read_bytes() == b.read_bytes()


_RUNS = itertools.count()


def _search(world, model: str, max_drop: float, quantize_fn=quantize_onnx, **kw):
    return accuracy_aware_quantize(
        world["paths"][model], world["tmp"] / f"search-{next(_RUNS)}", world["source"],
        evaluate=lambda p: correct(world, p), max_drop=max_drop,
        quantize_fn=quantize_fn, sensitivity_inputs=world["sens_inputs"], **kw,
    )


def test_within_budget_keeps_everything_quantized(world):
    path, report = _search(world, "plain", max_drop=3.0)
    assert report["excluded"] == [] and report["steps"] == [] and report["final_drop"] <= 3.0
    assert report["within_budget"] is True and report["chosen"] == "plain PTQ" and len(report["tried"]) == 1
    assert path.name == "model_int8.onnx" and [p.name for p in path.parent.iterdir()] == ["model_int8.onnx"]


@pytest.mark.parametrize("scheme", ["u8s8", "u8s8_reduce_range"])
def test_hostile_layer_is_found_and_kept_in_float(world, scheme):
    (hostile,) = hostile_node_names(world["paths"]["hostile1"])
    path, report = _search(world, "hostile1", max_drop=2.0, quantize_fn=functools.partial(quantize_onnx, scheme=scheme))
    assert report["quantizer"]["scheme"] == scheme
    assert report["fp32_accuracy"] - report["int8_accuracy"] > 30.0  # int8 really destroys it
    assert report["excluded"] == [hostile] and report["within_budget"] is True
    first = report["ranking"][0]
    assert first["layers"][0]["layer"] == hostile and first["layers"][0]["recovered"] > 0
    assert all(entry["recovered"] <= first["layers"][0]["recovered"] for entry in first["layers"])
    assert report["final_drop"] <= 2.0 and report["quantizer"]["float_layers"] == [hostile]
    assert top1(world, path) == pytest.approx(report["final_accuracy"])


def test_layers_are_named_by_their_torch_module(world):
    (hostile,) = hostile_node_names(world["paths"]["hostile1"])
    _, report = _search(world, "hostile1", max_drop=2.0)
    # tiny_cnn is an nn.Sequential: the second conv is its module "2"
    assert report["modules"] == {hostile: "2"} and report["steps"][0]["module"] == "2"
    assert f"{hostile:<28} {'2':<34}" in format_table(report)


def test_proxy_preselection_keeps_the_hostile_layer(world):
    # 4 layers, 3 candidates: the first and last layers, and the noisiest of the other two
    (hostile,) = hostile_node_names(world["paths"]["hostile1"])
    _, report = _search(world, "hostile1", max_drop=2.0, max_candidates=3)
    ranked = {entry["layer"] for entry in report["ranking"][0]["layers"]}
    layers = list(report["proxy"])
    assert report["candidates_by_proxy"] is True and ranked == {layers[0], hostile, layers[-1]}
    assert report["excluded"] == [hostile]


def test_missed_budget_keeps_the_best_file_and_says_why(world):
    hostile = hostile_node_names(world["paths"]["hostile2"])
    path, report = _search(world, "hostile2", max_drop=2.0, max_excluded=1)
    assert report["within_budget"] is False and path.is_file()
    (step,) = report["steps"]
    assert step["layer"] in hostile
    best = max(t["accuracy"] for t in report["tried"])
    assert report["final_accuracy"] == best == pytest.approx(top1(world, path))
    assert "no INT8 file tried is within max_drop 2 points" in report["miss"]
    assert f"{best:.2f}%" in report["miss"]

    # Re-ranked after the first revert, the second hostile layer is found too.
    _, report = _search(world, "hostile2", max_drop=2.0, max_excluded=2)
    assert set(report["excluded"]) == hostile and report["within_budget"] is True
    assert len(report["ranking"]) == 2


def test_variants_are_chosen_without_val_and_each_is_recorded(world):
    variants = {"onnxruntime percentile": functools.partial(quantize_onnx, method="percentile"),
                "broken": functools.partial(quantize_onnx, method="no-such-method")}
    selection = world["sens_inputs"]
    seen = []

    def evaluate(p):
        seen.append(p.name)
        return correct(world, p)

    _, report = accuracy_aware_quantize(
        world["paths"]["hostile1"], world["tmp"] / f"search-{next(_RUNS)}", world["source"], evaluate,
        max_drop=2.0, quantize_fn=quantize_onnx, sensitivity_inputs=selection, variants=variants,
        selection_inputs=lambda: selection)
    table = report["variants"]
    assert "error" in table["broken"] and "no-such-method" in table["broken"]["error"]
    scored = {k: v for k, v in table.items() if "error" not in v}
    assert set(scored) == {"plain PTQ", "onnxruntime percentile"}
    chosen = [k for k, v in scored.items() if v["chosen"]]
    best = max(scored, key=lambda k: (scored[k]["agreement"], -scored[k]["kl"]))
    assert chosen == [best] == [report["variant_chosen"]]
    assert all(0 <= v["agreement"] <= 1 and v["images"] == len(selection) for v in scored.values())


def test_negative_budget_is_refused(world):
    with pytest.raises(ValueError, match="max_drop -1 must be >= 0"):
        _search(world, "plain", max_drop=-1)
