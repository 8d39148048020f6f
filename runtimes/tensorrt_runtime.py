"""TensorRT: runs a serialized engine (built on the target by the exporter) with the TensorRT 10
name-based tensor API: set_input_shape / set_tensor_address / execute_async_v3.

The I/O buffers and the stream come from runtimes.tensorrt_buffers: torch CUDA tensors when torch
has a GPU, else raw CUDA runtime memory through ctypes (libcudart, which every TensorRT install
ships), so a Jetson needs only Python, numpy and JetPack's TensorRT. An engine is specific to the
GPU and the TensorRT version that built it; deserialization fails otherwise and the error says to
rebuild.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes import tensorrt_buffers
from runtimes.base import CannotLoad, as_batch, package_version, unimportable_reason

NAME = "tensorrt"
FORMATS = ("tensorrt",)
# Engines are bound to the GPU and TensorRT version that built them: on a device the runner
# builds one there from the bundle's ONNX.
BUILDS_FROM = ("onnx",)
KNOWN_DEVICES = ("cuda",)
DEFAULT_DEVICE = "cuda"

_MIN_MAJOR = 10  # execute_async_v3 and the name-based I/O API replace bindings from 10.0 on
# TensorRT DataType member name -> numpy dtype, read by name so TensorRT is not imported here.
# bfloat16 and fp8 have no numpy dtype and cannot cross the numpy boundary of run().
_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "UINT8": "uint8",
           "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


def version() -> str | None:
    """Installed TensorRT version (pip wheel or JetPack package), or None."""
    return package_version("tensorrt", "tensorrt", "tensorrt-cu13", "tensorrt-cu12",
                           "tensorrt-cu11")


def unavailable(device: str = "cuda") -> str | None:
    """Why TensorRT cannot run on `device`, or None."""
    if device.lower().partition(":")[0] != "cuda":
        return f"TensorRT runs on NVIDIA GPUs only; device {device!r} is not supported, use 'cuda'"
    reason = unimportable_reason("tensorrt", "tensorrt", "tensorrt")
    if reason:
        return (reason + " on a machine with an NVIDIA GPU (on a Jetson it ships with JetPack "
                         "as python3-libnvinfer)")
    import tensorrt as trt

    major = str(getattr(trt, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) < _MIN_MAJOR:
        return (f"tensorrt {trt.__version__} is too old: this runtime needs TensorRT "
                f">= {_MIN_MAJOR} (pip install 'edgeship[tensorrt]')")
    return tensorrt_buffers.unavailable(device)


def devices() -> list[str]:
    """["cuda"] when TensorRT and a CUDA device are both present, else []."""
    return [] if unavailable("cuda") else ["cuda"]


def numpy_dtype(trt_dtype) -> np.dtype:
    """The numpy dtype of a TensorRT DataType (by member name, e.g. DataType.HALF -> float16)."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    if name not in _DTYPES:
        raise TypeError(f"engine tensor type {name} has no numpy equivalent; supported: "
                        f"{sorted(_DTYPES)}: export the model with float32 or float16 inputs and outputs")
    return np.dtype(_DTYPES[name])


class TensorRtSession:
    """One execution context with I/O buffers from runtimes.tensorrt_buffers, rebound when the
    input shape changes. `cuda_stream` exists only with torch buffers (for CUDA-event timing)."""

    def __init__(self, runtime, engine, buffers) -> None:
        import tensorrt as trt

        self._runtime = runtime  # the runtime must outlive the engine it deserialized
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU "
                               "memory?); free GPU memory or use a smaller engine")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        if len(self.input_names) != 1 or not self.output_names:
            raise RuntimeError(f"engine has inputs {self.input_names} and outputs "
                               f"{self.output_names}; expected one image input and logits")
        self._buffers = buffers
        self.buffer_backend = buffers.NAME
        if getattr(buffers, "cuda_stream", None) is not None:
            self.cuda_stream = buffers.cuda_stream
        self._shape: tuple[int, ...] | None = None

    def _bind(self, shape: tuple[int, ...]) -> None:
        """The one place engine tensors get their shapes and device addresses."""
        name = self.input_names[0]
        if not self._context.set_input_shape(name, shape):
            low, _, high = self._engine.get_tensor_profile_shape(name, 0)
            raise ValueError(f"engine input {name!r} does not accept shape {shape}; its "
                             f"optimisation profile allows {tuple(low)} to {tuple(high)}: "
                             f"rebuild the engine with a profile that covers this batch size")
        for tensor in (name, *self.output_names):
            address = self._buffers.allocate(tensor, tuple(self._context.get_tensor_shape(tensor)),
                                             numpy_dtype(self._engine.get_tensor_dtype(tensor)))
            if not self._context.set_tensor_address(tensor, address):
                raise RuntimeError(f"TensorRT refused the buffer address for tensor {tensor!r}; "
                                   "the TensorRT log above names the cause")
        self._shape = shape

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = as_batch(batch)
        if self._shape != batch.shape:
            self._bind(batch.shape)
        self._buffers.upload(self.input_names[0], batch)
        with self._buffers.current_device():
            if not self._context.execute_async_v3(self._buffers.stream_handle):
                raise RuntimeError("TensorRT execute_async_v3 failed; the TensorRT log above "
                                   "names the cause")
        return self._buffers.download(self.output_names[0])

    def sync(self) -> None:
        self._buffers.sync()


def load(model, device: str = "cuda", threads: int | None = None) -> TensorRtSession:
    """Deserialize an engine (path or bytes) onto CUDA `device`. `threads` does not apply."""
    reason = unavailable(device)
    if reason:
        raise CannotLoad("tensorrt", device, reason)
    import tensorrt as trt

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine {str(path)!r} does not exist")
        data, origin = path.read_bytes(), str(path)
    elif isinstance(model, (bytes, bytearray)):
        data, origin = bytes(model), "<bytes>"
    else:
        raise TypeError(f"tensorrt.load expects an engine path or bytes, got {type(model).__name__}")

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    runtime = trt.Runtime(logger)
    buffers = tensorrt_buffers.open_buffers(device)
    # Deserialize on the session's device: the engine's memory lives where its buffers do.
    with buffers.current_device():
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} could not deserialize engine {origin!r}: engines "
                f"only load with the TensorRT version and GPU that built them; rebuild it here")
        return TensorRtSession(runtime, engine, buffers)
