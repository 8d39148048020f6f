"""TensorRT: runs a serialized engine (built on the target by the exporter) with the TensorRT 10
name-based tensor API: set_input_shape / set_tensor_address / execute_async_v3.

Device buffers are torch CUDA tensors and the session runs on a torch CUDA stream, so no second
CUDA binding (pycuda, cuda-python) is needed. An engine is specific to the GPU and the TensorRT
version that built it; deserialization fails otherwise and the error says to rebuild.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.base import as_batch, package_version, unimportable_reason
from runtimes.cuda_staging import PinnedStaging, cuda_unavailable_reason

NAME = "tensorrt"
FORMATS = ("tensorrt",)
# Engines are bound to the GPU and TensorRT version that built them: on a device the runner
# builds one there from the bundle's ONNX.
BUILDS_FROM = ("onnx",)
KNOWN_DEVICES = ("cuda",)
DEFAULT_DEVICE = "cuda"

_MIN_MAJOR = 10  # execute_async_v3 and the name-based I/O API replace bindings from 10.0 on
# TensorRT DataType member name -> torch dtype name, resolved lazily (neither is imported here).
_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
           "UINT8": "uint8", "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


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
    return cuda_unavailable_reason(device)


def devices() -> list[str]:
    """["cuda"] when TensorRT and a CUDA device are both present, else []."""
    return [] if unavailable("cuda") else ["cuda"]


def _torch_dtype(trt_dtype):
    import torch

    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    if name not in _DTYPES:
        raise TypeError(f"engine tensor type {name} has no torch equivalent here; "
                        f"supported: {sorted(_DTYPES)}")
    return getattr(torch, _DTYPES[name])


class TensorRtSession:
    """One execution context with torch-allocated I/O buffers, rebound when the shape changes."""

    def __init__(self, runtime, engine, device: str) -> None:
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
        self._staging = PinnedStaging(device)
        self._buffers: dict[str, object] = {}
        self._shape: tuple[int, ...] | None = None

    @property
    def cuda_stream(self):
        """The torch.cuda.Stream the engine runs on (for CUDA-event timing)."""
        return self._staging.stream

    def _bind(self, shape: tuple[int, ...]) -> None:
        import torch

        name = self.input_names[0]
        if not self._context.set_input_shape(name, shape):
            low, _, high = self._engine.get_tensor_profile_shape(name, 0)
            raise ValueError(f"engine input {name!r} does not accept shape {shape}; its "
                             f"optimisation profile allows {tuple(low)} to {tuple(high)}: "
                             f"rebuild the engine with a profile that covers this batch size")
        with torch.cuda.stream(self._staging.stream):
            for tensor in (name, *self.output_names):
                tshape = tuple(self._context.get_tensor_shape(tensor))
                buf = torch.empty(tshape, dtype=_torch_dtype(self._engine.get_tensor_dtype(tensor)),
                                  device=self._staging.device)
                self._context.set_tensor_address(tensor, buf.data_ptr())
                self._buffers[tensor] = buf
        self._shape = shape

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = as_batch(batch)
        if self._shape != batch.shape:
            self._bind(batch.shape)
        self._staging.upload(batch, self._buffers[self.input_names[0]])
        with torch.cuda.device(self._staging.device):
            if not self._context.execute_async_v3(self._staging.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed; the TensorRT log above "
                                   "names the cause")
        return self._staging.download(self._buffers[self.output_names[0]])

    def sync(self) -> None:
        self._staging.sync()


def load(model, device: str = "cuda", threads: int | None = None) -> TensorRtSession:
    """Deserialize an engine (path or bytes) onto CUDA `device`. `threads` does not apply."""
    reason = unavailable(device)
    if reason:
        raise RuntimeError(f"cannot load on tensorrt device {device!r}: {reason}")
    import tensorrt as trt
    import torch

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
    torch.cuda.init()  # TensorRT then shares torch's (primary) CUDA context
    with torch.cuda.device(torch.device(device)):
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} could not deserialize engine {origin!r}: engines "
                f"only load with the TensorRT version and GPU that built them; rebuild it here")
        return TensorRtSession(runtime, engine, device)
