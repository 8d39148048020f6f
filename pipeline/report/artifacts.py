"""Which artifacts a benchmark covers, where their model files are, and their size on disk.

The torch models of finetune, distill and prune (the teacher, the student, the pruned student)
and every ONNX, OpenVINO and TensorRT artifact of quantize and export. Artifacts export could not
build here (TensorRT without a GPU) come along with the reason, so the report says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from calibration.preprocess import Preprocessing
from pipeline.artifact import Format
from pipeline.store import Manifest

# The torch model each training stage hands on, by the name it has in reports.
TORCH_STAGES = {"finetune": "teacher", "distill": "student", "prune": "pruned"}
TEACHER = TORCH_STAGES["finetune"]
_DEPLOYABLE = (Format.onnx, Format.openvino, Format.tensorrt)


@dataclass(frozen=True)
class Candidate:
    """One artifact to benchmark: a model file of an upstream stage, or one that was not built."""

    name: str                    # teacher, student, pruned, onnx_fp32, openvino_int8, ...
    stage: str                   # the stage that produced it
    output: str                  # its output name in that stage's manifest
    format: Format
    precision: str               # fp32, fp16, int8
    path: Path | None            # the model file (torch: the checkpoint folder); None if not built
    sha256: str = ""
    reference: str | None = None  # the FP32 torch model it is compared with (agreement)
    preprocessing: Preprocessing | None = None
    unavailable: str | None = None  # why it was not built
    manifest: Manifest | None = field(default=None, compare=False, repr=False)


def artifact_file(manifest: Manifest, name: str) -> Path:
    """The model file of output `name`: the file itself (ONNX), or `metadata["model_file"]` inside
    the artifact folder (OpenVINO and TensorRT bundles); torch artifacts are their folder."""
    art = manifest.outputs.get(name)
    if art is None:
        raise KeyError(f"stage '{manifest.stage}' has no output '{name}' "
                       f"(it has: {', '.join(sorted(manifest.outputs))})")
    path = manifest.path_of(name)
    if art.metadata.get("model_file"):
        path = path / art.metadata["model_file"]
    if not path.exists():
        raise FileNotFoundError(f"output '{name}' of stage '{manifest.stage}' points at {path}, "
                                f"which does not exist; re-run the stage: edgeship run "
                                f"{manifest.stage} --force {manifest.stage}")
    return path


def model_files(path: Path, fmt: Format) -> list[Path]:
    """The files that make up a model: what a device has to store."""
    path = Path(path)
    if fmt == Format.torch:
        return [path / "model.safetensors"] if path.is_dir() else [path]
    if fmt == Format.openvino:
        return [path, path.with_suffix(".bin")]
    if fmt == Format.onnx:
        return [path, *_onnx_external_files(path)]
    return [path]


def size_bytes(path: Path, fmt: Format) -> int:
    """Bytes on disk of the model's graph and weight files (not sidecars, not golden data)."""
    return sum(f.stat().st_size for f in model_files(path, fmt) if f.is_file())


def _onnx_external_files(path: Path) -> list[Path]:
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return [path.parent / loc for loc in sorted(locations)]


def fixed_batch(path: Path, fmt: Format) -> int | None:
    """The batch size an artifact was exported with when its batch axis is static, else None.

    TensorRT engines answer None: their optimisation profile decides, and the runtime says so
    when a batch falls outside it.
    """
    if fmt == Format.onnx:
        import onnx
        graph = onnx.load(str(path), load_external_data=False).graph
        weights = {t.name for t in graph.initializer}
        first = next(i for i in graph.input if i.name not in weights)
        dim = first.type.tensor_type.shape.dim[0]
        return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
    if fmt == Format.openvino:
        import openvino as ov
        dim = ov.Core().read_model(str(path)).inputs[0].get_partial_shape()[0]
        return dim.get_length() if dim.is_static else None
    return None


def _precision(art_metadata: dict, name: str) -> str:
    if art_metadata.get("precision"):
        return str(art_metadata["precision"])
    for p in ("fp32", "fp16", "int8"):
        if name.endswith(p):
            return p
    pre = art_metadata.get("preprocessing") or {}
    return str(pre.get("precision", "fp32"))


def _format_of_name(name: str) -> Format:
    head = name.split("_", 1)[0]
    return Format(head) if head in Format._value2member_map_ else Format.data


def reference_name(inputs: dict[str, Manifest]) -> str | None:
    """The FP32 torch model exported and quantized artifacts descend from: the pruned student,
    else the student, else the teacher (whichever of those stages is present)."""
    for stage in ("prune", "distill", "finetune"):
        if stage in inputs and "model" in inputs[stage].outputs:
            return TORCH_STAGES[stage]
    return None


def candidates(inputs: dict[str, Manifest]) -> list[Candidate]:
    """Every artifact of the upstream manifests, torch models first (they are the references)."""
    out: list[Candidate] = []
    for stage, name in TORCH_STAGES.items():
        m = inputs.get(stage)
        if m is None or "model" not in m.outputs:
            continue
        art = m.outputs["model"]
        out.append(Candidate(name, stage, "model", Format.torch, "fp32", artifact_file(m, "model"),
                             art.sha256, name, art.preprocessing, manifest=m))
    ref = reference_name(inputs)
    quantize, export = inputs.get("quantize"), inputs.get("export")
    quantized = set(quantize.outputs) if quantize else set()
    seen: set[str] = set()
    # Export bundles quantize's ONNX files under the same names: one row each, the origin named.
    for m in (export, quantize):
        if m is None:
            continue
        for name, art in m.outputs.items():
            if art.format not in _DEPLOYABLE or name in seen:
                continue
            seen.add(name)
            stage = "quantize" if name in quantized else m.stage
            pre = art.preprocessing if "preprocessing" in art.metadata else None
            out.append(Candidate(name, stage, name, art.format, _precision(art.metadata, name),
                                 artifact_file(m, name), art.sha256, ref, pre, manifest=m))
    if export is not None:
        for name, reason in sorted((export.metrics.get("unavailable") or {}).items()):
            if name not in seen:
                out.append(Candidate(name, "export", name, _format_of_name(name),
                                     _precision({}, name), None, "", ref, unavailable=str(reason)))
    return out
