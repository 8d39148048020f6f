"""OpenVINO: runs IR (.xml with its .bin) and .onnx files, compiled for latency.

On CPUs with bfloat16 support OpenVINO's default inference precision is bf16, not f32: the
compiled precision is reported in `OpenVinoSession.properties`, and `inference_precision="f32"`
pins full precision when outputs must match other runtimes closely.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from runtimes import formats
from runtimes.base import CannotLoad, as_batch, package_version, unimportable_reason

NAME = "openvino"
FORMATS = ("openvino", "onnx")
DEFAULT_DEVICE = "cpu"
KNOWN_DEVICES = ("cpu",)  # OpenVINO adds the others it finds ("gpu.0", "npu")

_PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
# Compiled-model properties worth reporting next to a latency number.
_REPORTED = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
             "INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING", "EXECUTION_DEVICES")


def version() -> str | None:
    """Installed OpenVINO version, or None."""
    return package_version("openvino", "openvino")


def unavailable(device: str = "cpu") -> str | None:
    """Why `device` cannot be used with OpenVINO, or None."""
    reason = unimportable_reason("openvino", "openvino", "openvino")
    if reason:
        return reason
    try:
        found = devices()
    except Exception as exc:  # a plugin that fails to enumerate must not crash a listing
        return f"OpenVINO could not list its devices ({type(exc).__name__}: {exc})"
    wanted = device.lower()
    # "gpu" names the first GPU when OpenVINO lists "gpu.0", "gpu.1".
    if not any(wanted in (name, name.split(".")[0]) for name in found):
        return f"OpenVINO device {device!r} is not present; available: {', '.join(found) or 'none'}"
    return _compile_failure(wanted.split(".")[0])


@functools.lru_cache(maxsize=None)  # functools.cache is 3.9+: this file runs on devices too
def _compile_failure(device: str) -> str | None:
    """Why a one-convolution model does not compile on `device`, or None. A listed device can still
    refuse every model: the CPU plugin's own oneDNN will not start while ONEDNN_MAX_CPU_ISA (the
    variable that limits PyTorch's oneDNN) is set, and says only "object is not initialized"."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 3, 4, 4], ov.Type.f32)
    conv = ops.convolution(x, ops.constant(np.ones((4, 3, 1, 1), np.float32)), [1, 1], [0, 0], [0, 0], [1, 1])
    try:  # a convolution: element-wise layers compile even where oneDNN refused to start
        core().compile_model(ov.Model([conv], [x]), device.upper())
    except Exception as exc:
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        if "ONEDNN_MAX_CPU_ISA" in os.environ and device == "cpu":
            return (f"OpenVINO's CPU plugin does not start while ONEDNN_MAX_CPU_ISA="
                    f"{os.environ['ONEDNN_MAX_CPU_ISA']} is set ({last}); unset it for OpenVINO rows")
        return f"OpenVINO cannot compile a model on {device} ({last})"
    return None


@functools.lru_cache(maxsize=None)  # functools.cache is 3.9+: this file runs on devices too
def core():
    """The one `openvino.Core` of this process; every device use goes through it.

    Each Core's CPU plugin replaces the calling thread's alternate signal stack with one it
    mmaps, and on destruction puts back the stack it found and unmaps its own. Two Cores that
    die in the other order than they were made therefore leave the main thread's signal stack
    pointing at unmapped memory: the next signal with a handler (Ctrl-C, or SIGCHLD once torch's
    DataLoader has installed one) kills the process with a SIGSEGV that no handler can report, or,
    when the address has been mapped again, writes the signal frame over live heap memory. One
    Core that lives until exit installs one stack and never restores a stale one.
    (openvinotoolkit/openvino#11894 added the stack swap, for AMX.)
    """
    import openvino as ov

    return ov.Core()


def devices() -> list[str]:
    """OpenVINO's available devices, lower-cased (e.g. ["cpu"], ["cpu", "gpu.0", "npu"])."""
    if unimportable_reason("openvino", "openvino", "openvino"):
        return []
    return [name.lower() for name in core().available_devices]


def compile_config(device: str, threads: int | None,
                   inference_precision: str | None = None) -> dict[str, str]:
    """The properties this runtime compiles with, as strings (also usable by benchmark_app).

    Latency hint everywhere; on CPU also one stream and `threads` inference threads, so one
    request uses exactly the cores it was given.
    """
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {hints.performance_mode(): "LATENCY"}
    if device.lower().startswith("cpu"):
        config[props.streams.num()] = "1"
        if threads:
            config[props.inference_num_threads()] = str(int(threads))
    if inference_precision is not None:
        key = inference_precision.lower()
        if key not in _PRECISIONS:
            raise ValueError(f"inference_precision {inference_precision!r} is not one of "
                             f"{sorted(_PRECISIONS)}")
        config[hints.inference_precision()] = _PRECISIONS[key]
    return config


def pinned_options(precision: str, device: str) -> dict:
    """Load options that make OpenVINO compute in the artifact's own precision.

    The measurement is then of the artifact, not of the device's precision policy: f32 for fp32
    artifacts and for int8 ones (their quantized layers run int8 either way; the float remainder
    stays f32 so accuracy reflects quantization alone); f16 for fp16 artifacts on devices that
    compute in f16, else f32 (the CPU plugin would substitute bf16, a different number format
    from the artifact's).
    """
    if str(precision).lower() in ("fp16", "f16") and "FP16" in _capabilities(device):
        return {"inference_precision": "f16"}
    return {"inference_precision": "f32"}


def _capabilities(device: str) -> list[str]:
    try:
        return list(core().get_property(device.upper(), "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # a device that does not report capabilities computes as it is told
        return []


class OpenVinoSession:
    """One compiled model and a single InferRequest (the latency configuration)."""

    def __init__(self, compiled, requested_precision: str | None = None) -> None:
        import openvino as ov

        self._tensor = ov.Tensor
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._input: np.ndarray | None = None
        self.properties = {key: _property(compiled, key) for key in _REPORTED}
        self.settings = {"requested_inference_precision": requested_precision or "device default",
                         **{k.lower(): v for k, v in self.properties.items()}}

    def run(self, batch: np.ndarray) -> np.ndarray:
        # The input is shared, not copied; the output is copied once because the request
        # reuses its buffer on the next call. This is the cheapest Python path into infer().
        # The request keeps only a pointer to shared input memory, not a reference: the session
        # holds the array until the next call, or a converted temporary would be freed before
        # infer() reads it.
        self._input = as_batch(batch)
        self._request.set_input_tensor(self._tensor(self._input, shared_memory=True))
        self._request.infer(share_outputs=True)
        return self._request.get_output_tensor(0).data.copy()

    @property
    def request_latency_ms(self) -> float:
        """OpenVINO's own timing of the last infer() (excludes the Python call around it)."""
        return float(self._request.latency)

    def sync(self) -> None:
        # infer() is synchronous: it returns after the device finished.
        return None


def load(model, device: str = "cpu", threads: int | None = None,
         inference_precision: str | None = None) -> OpenVinoSession:
    """Compile an IR/ONNX path (or an openvino.Model) on `device` with a latency configuration.

    `inference_precision` ("f32", "bf16", "f16") overrides the device default precision.
    """
    reason = unavailable(device)
    if reason:
        raise CannotLoad("openvino", device, reason)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"OpenVINO model {str(path)!r} does not exist")
        missing = [f for f in formats.for_file(path).model_files(path) if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"OpenVINO model {str(path)!r} has no {str(missing[0])!r} "
                                    f"beside it")
        model = core().read_model(str(path))
    config = compile_config(device, threads, inference_precision)
    compiled = core().compile_model(model, device.upper(), config)
    return OpenVinoSession(compiled, inference_precision)


def _property(compiled, key: str) -> str | None:
    try:
        value = compiled.get_property(key)
    except Exception:  # not every device reports every property
        return None
    if hasattr(value, "get_type_name"):  # openvino.Type, e.g. bf16
        return value.get_type_name()
    if hasattr(value, "name") and not isinstance(value, str):  # enums, e.g. PerformanceMode
        return str(value.name)
    return str(value)
