"""ONNX → OpenVINO IR (.xml + .bin), fp32, fp16-compressed, or INT8 from a Q/DQ ONNX.

OpenVINO turns QuantizeLinear/DequantizeLinear pairs into FakeQuantize ops and its CPU plugin then
runs those layers in int8, so the one Q/DQ file produced by the quantize stage is also the INT8
source here. The preprocessing metadata goes into the IR's rt_info and a `<name>.json` sidecar.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from calibration.preprocess import Preprocessing
from exporters.onnx_export import check_preprocessing_matches, parity_against_onnx
from exporters.spec import ExportError, ExportSpec, ExportUnavailable, Precision, publish, staging_dir
from runtimes import formats, openvino_runtime
from runtimes.execution import open_model
from runtimes.formats.openvino_format import RT_INFO_PATH

_LOW_PRECISION_OPS = {"FakeQuantize"}

log = logging.getLogger(__name__)


def unavailable() -> str | None:
    """Why an IR cannot be made here, or None: the conversion needs openvino, and its parity
    check runs the IR on the CPU."""
    return openvino_runtime.unavailable("cpu")


def export_onnx_to_openvino(src: Path, out_dir: Path, spec: ExportSpec) -> Path:
    """Convert `src` (.onnx) to `<out_dir>/<stem>.xml` + `.bin` + `.json`; check parity vs the ONNX."""
    reason = unavailable()
    if reason:
        raise ExportUnavailable(reason)
    import openvino as ov

    src, out_dir = Path(src), Path(out_dir)
    if not src.is_file():
        raise FileNotFoundError(f"onnx→openvino source {src} does not exist")
    _check_precision_matches_graph(src, spec.precision)
    check_preprocessing_matches(src, spec)
    pre = spec.tagged_preprocessing()
    model = ov.convert_model(str(src))
    model.set_rt_info(json.dumps(pre.to_dict(), sort_keys=True), RT_INFO_PATH)

    final_xml = out_dir / f"{src.stem}.xml"
    with staging_dir(out_dir) as tmp:
        xml = tmp / final_xml.name
        # compress_to_fp16 defaults to True in save_model: state it, so fp32/int8 IRs keep fp32 weights.
        ov.save_model(model, str(xml), compress_to_fp16=spec.precision is Precision.FP16)
        sidecar = xml.with_suffix(".json")
        sidecar.write_text(json.dumps({"preprocessing": pre.to_dict(), "precision": spec.precision.value,
                                       "source": src.name}, indent=2, sort_keys=True))
        if spec.precision is Precision.INT8:
            _assert_low_precision(xml)
        # Pinned to the artifact's precision (f32 for fp32 and int8 on CPU): the check measures
        # the artifact, not the device's precision policy.
        ir = open_model(xml, "openvino", precision=spec.precision.value)
        result = parity_against_onnx(src, ir.run, spec, final_xml)
        log.info("openvino export %s: %s", final_xml, result.describe())
        # The .xml goes last: its presence means the .bin and sidecar beside it are complete.
        publish(xml.with_suffix(".bin"), final_xml.with_suffix(".bin"))
        publish(sidecar, final_xml.with_suffix(".json"))
        return publish(xml, final_xml)


def read_ir_preprocessing(xml: Path) -> Preprocessing | None:
    """The preprocessing stored in an IR's rt_info, or None if it has none."""
    stored = formats.get("openvino").read_preprocessing(xml)
    return None if stored is None else Preprocessing.from_dict(stored)


def ir_op_types(xml: Path) -> set[str]:
    """The operation types in an IR (e.g. to see FakeQuantize in an INT8 model)."""
    import openvino as ov

    return {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}


def _check_precision_matches_graph(src: Path, precision: Precision) -> None:
    import onnx

    ops = {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    has_qdq = bool(ops & {"QuantizeLinear", "DequantizeLinear"})
    if precision is Precision.INT8 and not has_qdq:
        raise ExportError(f"{src.name} has no QuantizeLinear/DequantizeLinear nodes but precision is int8: "
                          "export the Q/DQ ONNX written by the quantize stage")
    if has_qdq and precision is not Precision.INT8:
        raise ExportError(f"{src.name} is a Q/DQ (quantized) ONNX but precision is {precision.value}: "
                          "set precision to int8 for it")


def _assert_low_precision(xml: Path) -> None:
    ops = ir_op_types(xml)
    if not ops & _LOW_PRECISION_OPS:
        raise ExportError(f"INT8 IR {xml.name} has no FakeQuantize ops (found {sorted(ops)}): "
                          "OpenVINO did not keep the Q/DQ quantization of the source ONNX")
