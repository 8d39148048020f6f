"""torch → ONNX with the dynamo-based `torch.onnx` exporter, checked against the torch model.

The ONNX file carries the preprocessing metadata in `metadata_props` so every later consumer
(quantizer, OpenVINO, TensorRT, runtimes, bundles) preprocesses exactly as the model was trained.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from calibration.preprocess import Preprocessing
from exporters.parity import ParityResult, RunFn, check_export
from exporters.spec import ExportError, ExportSpec, Precision, publish, staging_dir
from runtimes import formats
from runtimes.execution import open_model
from runtimes.formats.onnx_format import write_preprocessing

INPUT_NAME, OUTPUT_NAME = "input", "logits"
# protobuf cannot serialise a message over 2 GiB; larger models keep weights in `<name>.onnx.data`.
_EMBED_LIMIT = 1_900_000_000

log = logging.getLogger(__name__)


def export_torch_to_onnx(model, out_dir: Path, spec: ExportSpec) -> Path:
    """Export an eval-mode `torch.nn.Module` to `<out_dir>/<spec.name>.onnx` and check its parity."""
    import onnx
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"torch→onnx export needs a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            f"{type(model).__name__} is in training mode: call model.eval() before export "
            "(dropout and batch-norm statistics would otherwise be baked into the graph)"
        )
    if spec.precision is not Precision.FP32:
        raise ValueError(f"torch→onnx writes fp32 ONNX, not {spec.precision.value}: fp16 is applied by the "
                         "OpenVINO/TensorRT exporters and int8 by the quantize stage (a Q/DQ ONNX)")
    batches = spec.parity_batches()  # validated before the (slow) export, not after
    out_dir = Path(out_dir)
    final = out_dir / f"{spec.name}.onnx"
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example_batch = max(2, spec.batch_size) if spec.dynamic_batch else spec.batch_size
    rng = np.random.default_rng(spec.check_seed)
    example = torch.from_numpy(
        rng.standard_normal(spec.preprocessing.input_shape(example_batch)).astype(np.float32)
    ).to(device)
    _check_single_output(model, example)
    dynamic_shapes = None
    if spec.dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=max(2, spec.max_batch_size))},)

    program = torch.onnx.export(
        model, (example,), None, dynamo=True, opset_version=spec.opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes, verbose=False,
    )
    proto = program.model_proto
    write_preprocessing(proto, spec.tagged_preprocessing().to_dict())

    with staging_dir(out_dir) as tmp:
        staged = tmp / final.name
        embedded = proto.ByteSize() < _EMBED_LIMIT
        if embedded:
            proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
            onnx.save_model(proto, staged)
            _assert_embedded(staged)
        else:
            onnx.save_model(proto, staged, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{final.name}.data")
            onnx.shape_inference.infer_shapes_path(str(staged), str(staged))
        onnx.checker.check_model(str(staged), full_check=True)
        reference = open_model(model, "torch", device=_runtime_device(device))
        result = check_export(reference.run, open_model(staged, "onnx").run, batches,
                              spec.precision, artifact=str(final))
        log.info("onnx export %s: %s", final, result.describe())
        if not embedded:
            publish(tmp / f"{final.name}.data", out_dir / f"{final.name}.data")
        return publish(staged, final)


def read_preprocessing(path: Path) -> Preprocessing | None:
    """The preprocessing stored in an ONNX file's metadata_props, or None if it has none."""
    stored = formats.get("onnx").read_preprocessing(path)
    return None if stored is None else Preprocessing.from_dict(stored)


def check_preprocessing_matches(onnx_path: Path, spec: ExportSpec) -> None:
    """Refuse to convert an ONNX whose stored preprocessing disagrees with the spec's.

    A mismatch means the stages were wired to different models or configs; shipping it would
    preprocess images differently from training (only `precision` may differ between edges).
    """
    stored = read_preprocessing(onnx_path)
    if stored is None:
        return
    ours = spec.preprocessing.with_(precision=stored.precision)
    if stored != ours:
        diffs = {k: (v, ours.to_dict()[k]) for k, v in stored.to_dict().items() if ours.to_dict()[k] != v}
        raise ExportError(f"{onnx_path.name} stores preprocessing that differs from the export spec's "
                          f"(field: (onnx, spec)) {diffs}; export from the matching model or fix the config")


def parity_against_onnx(onnx_path: Path, out_fn: RunFn, spec: ExportSpec, artifact: Path) -> ParityResult:
    """Check a converted artifact against its source ONNX run in ONNX Runtime (CPU); an INT8
    artifact against the FP32 ONNX its source was quantized from, when the spec names it."""
    reference = spec.reference if spec.precision is Precision.INT8 and spec.reference else onnx_path
    return check_export(open_model(reference, "onnx").run, out_fn, spec.parity_batches(), spec.precision,
                        artifact=str(artifact))


def _assert_embedded(path: Path) -> None:
    """A small model must travel as one file: fail if any tensor points at external data."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in proto.graph.initializer if uses_external_data(t)]
    if external:
        raise ExportError(f"{path.name} references external weight files for {external[:3]}; "
                          "expected every weight embedded in the .onnx file")


def _check_single_output(model, example) -> None:
    """Exporters and runtimes read one logits tensor; refuse a model that returns anything else."""
    import torch

    with torch.inference_mode():
        out = model(example)
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"{type(model).__name__} returned {type(out).__name__}; "
                          "exporters expect a single logits tensor")


def _runtime_device(device) -> str:
    """The torch runtime's name for the device the model's weights are on."""
    return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
