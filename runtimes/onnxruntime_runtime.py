"""ONNX Runtime: runs .onnx files (fp32 and Q/DQ int8) on the CPU, or on CUDA with the GPU build."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.base import CannotLoad, as_batch, package_version, unimportable_reason

NAME = "onnxruntime"
FORMATS = ("onnx",)
DEFAULT_DEVICE = "cpu"
KNOWN_DEVICES = ("cpu", "cuda")  # asked about even where absent: rows say why

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def version() -> str | None:
    """Installed onnxruntime version (CPU or GPU build), or None."""
    return package_version("onnxruntime", "onnxruntime", "onnxruntime-gpu")


def unavailable(device: str = "cpu") -> str | None:
    """Why `device` cannot be used with ONNX Runtime, or None."""
    reason = unimportable_reason("onnxruntime", "onnxruntime")
    if reason:
        return reason
    kind = _device_kind(device)
    if kind not in _PROVIDERS:
        return f"onnxruntime has no device {device!r}; use one of {sorted(_PROVIDERS)}"
    import onnxruntime as ort

    if kind == "cuda" and _PROVIDERS[kind] not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (this is the CPU "
                f"build); install the GPU build: pip install onnxruntime-gpu")
    return None


def devices() -> list[str]:
    """Devices this onnxruntime build can run on."""
    if unimportable_reason("onnxruntime", "onnxruntime"):
        return []
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [name for name, provider in _PROVIDERS.items() if provider in available]


def _device_kind(device: str) -> str:
    # "cuda:1" selects GPU 1; the provider is the same.
    return device.lower().split(":", 1)[0]


def _device_id(device: str) -> int:
    _, _, index = device.partition(":")
    if index and not index.isdigit():
        raise ValueError(f"device {device!r} has a non-numeric index; use 'cuda' or 'cuda:N'")
    return int(index) if index else 0


class OnnxRuntimeSession:
    """One InferenceSession with a single float input and the first output as logits."""

    def __init__(self, session) -> None:
        self._session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.providers = session.get_providers()
        self.settings = {"providers": list(self.providers)}

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self.output_name], {self.input_name: as_batch(batch)})[0]

    def run_named(self, batch: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """The graph tensors called `names` (e.g. intermediate activations a model exposes as
        outputs), for analyses that look inside the model."""
        return self._session.run(names, {self.input_name: as_batch(batch)})

    def session_options(self):
        """The SessionOptions the live session reports, to show what it really runs with."""
        return self._session.get_session_options()

    def sync(self) -> None:
        # InferenceSession.run returns host arrays, so device work has already finished.
        return None


@dataclass(frozen=True)
class SessionSettings:
    """How our sessions run. The one place these are decided: `load` applies them, and the
    fidelity check hands the same values to onnxruntime_perf_test
    (runtimes.fidelity_onnxruntime)."""

    intra_op_threads: int            # 0 lets ONNX Runtime choose
    inter_op_threads: int = 1
    sequential: bool = True          # ORT_SEQUENTIAL: batch 1 gains nothing from parallel nodes
    optimization_level: str = "ORT_ENABLE_ALL"   # a GraphOptimizationLevel name
    cpu_mem_arena: bool = True       # ONNX Runtime's defaults, stated so both tools are told
    mem_pattern: bool = True


def session_settings(threads: int | None) -> SessionSettings:
    """The settings of a session with `threads` intra-op threads (None: ONNX Runtime chooses)."""
    return SessionSettings(intra_op_threads=int(threads) if threads else 0)


def session_options(settings: SessionSettings):
    """An onnxruntime.SessionOptions carrying `settings`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if settings.sequential
                              else ort.ExecutionMode.ORT_PARALLEL)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               settings.optimization_level)
    options.enable_cpu_mem_arena = settings.cpu_mem_arena
    options.enable_mem_pattern = settings.mem_pattern
    options.log_severity_level = 3  # errors only: the optimiser's warnings are not actionable here
    return options


def load(model, device: str = "cpu", threads: int | None = None) -> OnnxRuntimeSession:
    """Load an ONNX model (path, serialized bytes, or onnx.ModelProto) on `device`.

    CPU: `session_settings(threads)`: intra-op threads = `threads` (None lets ONNX Runtime
    choose), one inter-op thread, sequential execution, all graph optimisations. "cuda[:N]" puts
    the CUDA provider first and fails when ONNX Runtime silently fell back to the CPU.
    """
    reason = unavailable(device)
    if reason:
        raise CannotLoad("onnxruntime", device, reason)
    import onnxruntime as ort

    options = session_options(session_settings(threads))
    if _device_kind(device) == "cuda":
        providers = [("CUDAExecutionProvider", {"device_id": _device_id(device)}),
                     "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]

    source = _model_source(model)
    session = ort.InferenceSession(source, sess_options=options, providers=providers)
    if _device_kind(device) == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise RuntimeError(
            f"onnxruntime could not start the CUDA provider for {device!r} (providers in use: "
            f"{session.get_providers()}); check that the CUDA and cuDNN libraries it needs are "
            f"on the library path")
    return OnnxRuntimeSession(session)


def _model_source(model):
    """A path string or serialized bytes, as InferenceSession accepts."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
        return str(path)
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    raise TypeError(f"onnxruntime.load expects a path, bytes or onnx.ModelProto, "
                    f"got {type(model).__name__}")
