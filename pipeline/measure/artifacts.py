"""Which artifacts a benchmark covers, and where their model files are.

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
from runtimes import formats

# The torch model each training stage hands on, by the name it has in reports.
TORCH_STAGES = {"finetune": "teacher", "distill": "student", "prune": "pruned"}
TEACHER = TORCH_STAGES["finetune"]


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
    failed: str | None = None       # why its export failed (e.g. its parity check)
    not_deployable: str | None = None  # why it is measured but must not ship (INT8 outside its budget)
    manifest: Manifest | None = field(default=None, compare=False, repr=False)


def shippable(row: dict) -> bool:
    """Whether a benchmark row's artifact may be deployed: an exported format, and not held back
    (an INT8 file outside quantize.max_accuracy_drop is measured and shown, never shipped)."""
    return formats.get(row["format"]).deployable and not row.get("not_deployable")


def held_back(rows: list[dict]) -> dict[str, str]:
    """Artifacts measured but not to be shipped, with why."""
    return {r["artifact"]: r["not_deployable"] for r in rows if r.get("not_deployable")}


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


def _check_seal(manifest: Manifest, name: str) -> None:
    """A deployment bundle is measured only when it is the one export sealed: its model.json
    hash matches the manifest's record and its files match model.json (BundleError otherwise)."""
    sealed = manifest.outputs[name].metadata.get("bundle_sha256")
    if sealed:
        from exporters.bundle import read_bundle
        read_bundle(manifest.path_of(name), sealed)


def candidates(inputs: dict[str, Manifest]) -> list[Candidate]:
    """Every artifact of the upstream manifests, torch models first (they are the references)."""
    out: list[Candidate] = []
    for stage, name in TORCH_STAGES.items():
        m = inputs.get(stage)
        if m is None or "model" not in m.outputs:
            continue
        art = m.outputs["model"]
        out.append(Candidate(name, stage, "model", art.format, "fp32", artifact_file(m, "model"),
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
            if art.format == Format.data or not formats.get(art.format).deployable or name in seen:
                continue
            seen.add(name)
            _check_seal(m, name)
            stage = "quantize" if name in quantized else m.stage
            pre = art.preprocessing if "preprocessing" in art.metadata else None
            out.append(Candidate(name, stage, name, art.format, _precision(art.metadata, name),
                                 artifact_file(m, name), art.sha256, ref, pre, manifest=m,
                                 not_deployable=art.metadata.get("not_deployable")))
    if export is not None:
        for name, reason in sorted((export.metrics.get("unavailable") or {}).items()):
            if name not in seen:
                out.append(Candidate(name, "export", name, _format_of_name(name),
                                     _precision({}, name), None, "", ref, unavailable=str(reason)))
        for name, reason in sorted((export.metrics.get("failed") or {}).items()):
            if name not in seen:
                out.append(Candidate(name, "export", name, _format_of_name(name),
                                     _precision({}, name), None, "", ref, failed=str(reason),
                                     not_deployable=f"failed at export: {reason}"))
    return out
