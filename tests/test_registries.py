"""Contract tests over the registries: every runtime, every exporter edge, every format handler.

A new runtime, edge or format is held to the same contract without a new test (as timm's tests
parametrize over list_models()). Real files are exported once: a tiny CNN to ONNX (static batch 1)
and that ONNX to an OpenVINO IR.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

import exporters
import runtimes
from calibration.preprocess import Preprocessing
from exporters import EXPORTERS, ExportSpec
from runtimes import formats
from runtimes.execution import open_model

PRE = Preprocessing(16, (0.5,) * 3, (0.25,) * 3, labels=("a", "b", "c"))
CLASSES = len(PRE.labels)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny torch model and real files of it in every format this machine can write."""
    import torch
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, CLASSES)).eval()
    out = tmp_path_factory.mktemp("formats")
    onnx_file = exporters.export(module, "torch", "onnx", out, ExportSpec(preprocessing=PRE))
    found = {"torch": module, "onnx": onnx_file}
    if runtimes.get("openvino").unavailable("cpu") is None:
        found["openvino"] = exporters.export(onnx_file, "onnx", "openvino", out / "ir", ExportSpec(preprocessing=PRE))
    return found


# ------------------------------------------------------------------------------------- runtimes
@pytest.mark.parametrize("name", list(runtimes.RUNTIMES))
def test_runtime_module_contract(name):
    module = runtimes.get(name)
    assert module.NAME == name
    assert module.FORMATS and all(f in formats.FORMATS for f in module.FORMATS)
    assert module.DEFAULT_DEVICE in getattr(module, "KNOWN_DEVICES", (module.DEFAULT_DEVICE,))
    for fn in ("version", "unavailable", "devices", "load"):
        assert callable(getattr(module, fn)), f"{name} has no {fn}()"
    params = list(inspect.signature(module.load).parameters)
    assert params[:3] == ["model", "device", "threads"], params
    reason = module.unavailable(module.DEFAULT_DEVICE)
    assert reason is None or (isinstance(reason, str) and reason)
    assert isinstance(module.devices(), list)
    assert module.unavailable("no-such-device") is not None     # a bad device is a reason, not a crash


@pytest.mark.parametrize("name", list(runtimes.RUNTIMES))
def test_every_runtime_runs_every_format_it_claims(name, models):
    module = runtimes.get(name)
    reason = module.unavailable(module.DEFAULT_DEVICE)
    if reason:
        pytest.skip(reason)
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    reference = open_model(models["torch"], "torch").run(x)
    for fmt in module.FORMATS:
        if fmt not in models:
            continue
        loaded = open_model(models[fmt], fmt, name, threads=1)
        logits = loaded.run(x)                 # three images through a static batch of one
        loaded.sync()
        assert logits.shape == (3, CLASSES)
        np.testing.assert_allclose(logits, reference, atol=1e-3, err_msg=f"{name} on {fmt}")
        assert isinstance(loaded.settings, dict) and loaded.settings["threads"] == 1


# --------------------------------------------------------------------------------- exporter edges
@pytest.mark.parametrize("edge", list(EXPORTERS), ids=lambda e: f"{e[0]}-{e[1]}")
def test_exporter_edge_contract(edge):
    src, dst = edge
    assert src in formats.FORMATS and dst in formats.FORMATS
    assert list(inspect.signature(EXPORTERS[edge]).parameters)[1:] == ["out_dir", "spec"]  # (src, out_dir, spec)
    assert formats.get(dst).deployable, f"{dst} is exported, so it ships"
    assert runtimes.for_format(dst), f"no runtime serves {dst}: its exports could not be checked"


def test_unknown_edge_names_the_known_ones(tmp_path):
    with pytest.raises(exporters.UnknownExportEdge, match="known edges: torch→onnx"):
        exporters.export(None, "openvino", "onnx", tmp_path, ExportSpec(preprocessing=PRE))


# ------------------------------------------------------------------------------- format handlers
@pytest.mark.parametrize("name", list(formats.FORMATS))
def test_format_handler_contract(name, models):
    handler = formats.get(name)
    assert handler.name == name and formats.get(name.upper()) is handler
    assert handler.scoring_runtime in {m.NAME for m in runtimes.for_format(name)}, \
        f"{name}'s scoring runtime {handler.scoring_runtime} does not serve it"
    for suffix in handler.suffixes:
        assert formats.for_file(Path("model" + suffix)) is handler
    model = models.get(name)
    if model is None or handler.rebuilt_in_memory:
        return
    files = handler.model_files(model)
    assert files[0] == Path(model) and all(f.is_file() for f in files)
    assert handler.size_bytes(model) == sum(f.stat().st_size for f in files)
    assert handler.static_batch(model) == 1                       # exported with a fixed batch of one
    assert Preprocessing.from_dict(handler.read_preprocessing(model)) == PRE
    inputs, outputs = handler.io_signature(model)
    assert inputs[0]["shape"] == [1, 3, 16, 16] and outputs[0]["shape"] == [1, CLASSES]


def test_unknown_format_and_suffix_say_what_is_known():
    with pytest.raises(KeyError, match="known formats: torch, onnx"):
        formats.get("tflite")
    with pytest.raises(ValueError, match=r"no model format has the suffix '\.tflite'"):
        formats.for_file(Path("m.tflite"))
