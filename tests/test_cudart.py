"""The torch-free CUDA path: libcudart found in the documented order, clear reasons when it or a GPU
is missing, CUDA error codes named by the library itself, TensorRT sessions without torch, and
(on a GPU) real copies and a real engine through libcudart."""
from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from runtimes import cudart, tensorrt_buffers, tensorrt_runtime

ROOT = Path(__file__).resolve().parents[1]


def _library():
    """The real libcudart, or None with the reason it cannot be opened."""
    try:
        return cudart.open_library(), None
    except cudart.CudartNotFound as err:
        return None, str(err)


LIB, NO_LIB = _library()
NO_GPU = cudart.unavailable()
needs_lib = pytest.mark.skipif(LIB is None, reason=NO_LIB or "")
needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")


@pytest.fixture
def fresh(monkeypatch):
    """cudart with nothing opened yet, restored afterwards."""
    monkeypatch.setattr(cudart, "_opened", {})
    return cudart


# ---- finding the library ----------------------------------------------------------------------

def test_search_order_loader_pick_then_sonames_newest_first_then_cuda_dirs(tmp_path, monkeypatch):
    assert cudart.LIBRARY_DIRS[:2] == ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib")
    jetpack = tmp_path / "targets" / "aarch64-linux" / "lib"
    jetpack.mkdir(parents=True)
    for name in ("libcudart.so.11.0", "libcudart.so.12", "libcudart_static.a"):
        (jetpack / name).write_bytes(b"")
    monkeypatch.setattr(cudart, "LIBRARY_DIRS", (str(tmp_path / "missing"), str(jetpack)))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libcudart.so.12" if name == "cudart" else None)
    assert cudart.library_candidates() == [
        "libcudart.so.12", "libcudart.so", "libcudart.so.13", "libcudart.so.11.0", "libcudart.so.10.2",
        str(jetpack / "libcudart.so.12"), str(jetpack / "libcudart.so.11.0")]
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert cudart.library_candidates()[:2] == ["libcudart.so", "libcudart.so.13"]


def test_no_library_is_a_reason_naming_what_was_tried(tmp_path, fresh, monkeypatch):
    broken = tmp_path / "libcudart.so.12"
    broken.write_bytes(b"not a shared object, just bytes" * 8)
    with pytest.raises(cudart.CudartNotFound) as caught:
        cudart.open_library(["libcudart.so.99", str(broken)])
    message = str(caught.value)
    assert message.startswith(f"libcudart not found (tried libcudart.so.99, {broken} ({broken}: ")
    assert message.endswith("): install the CUDA runtime that TensorRT was built against "
                            "(on a Jetson it ships with JetPack)")
    monkeypatch.setattr(fresh, "library_candidates", lambda: ["libcudart.so.99", "libcudart.so.98"])
    assert fresh.unavailable("cuda") == (
        "libcudart not found (tried libcudart.so.99, libcudart.so.98): install the CUDA runtime that "
        "TensorRT was built against (on a Jetson it ships with JetPack)")


def test_a_library_without_the_cuda_runtime_functions_is_skipped():
    libc = ctypes.util.find_library("c")
    with pytest.raises(cudart.CudartNotFound, match=r"tried libc\.so\.6"):
        cudart.open_library([libc])


# ---- the real library -------------------------------------------------------------------------

@needs_lib
def test_error_codes_are_named_by_the_library():
    LIB.check(0, "cudaSetDevice")  # cudaSuccess raises nothing
    with pytest.raises(cudart.CudaError) as caught:
        LIB.check(2, "cudaMalloc(64 bytes)")
    assert str(caught.value) == "cudaMalloc(64 bytes) failed: cudaErrorMemoryAllocation (2): out of memory"
    assert (caught.value.call, caught.value.code, caught.value.name) == ("cudaMalloc(64 bytes)", 2,
                                                                        "cudaErrorMemoryAllocation")
    assert LIB.error_name(100) == "cudaErrorNoDevice"
    assert LIB.error_string(1) == "invalid argument"


@needs_lib
def test_every_bound_function_has_its_prototype_declared():
    for name, (restype, argtypes) in cudart._PROTOTYPES.items():
        func = getattr(LIB._lib, name)
        assert func.restype is restype and func.argtypes == argtypes, name
    assert LIB.runtime_version() >= 10020  # JetPack 4's CUDA 10.2 is the oldest a device has


@pytest.mark.gpu
@needs_lib
def test_device_count_agrees_with_torch_and_no_gpu_is_a_reason():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        assert LIB.device_count() == torch.cuda.device_count()
        assert cudart.unavailable("cuda") is None
        count = torch.cuda.device_count()
        assert cudart.unavailable(f"cuda:{count}") == (f"device 'cuda:{count}' does not exist: "
                                                       f"{cudart.runtime().path} sees {count} CUDA device(s)")
        return
    with pytest.raises(cudart.CudaError) as caught:
        LIB.device_count()
    assert caught.value.name in ("cudaErrorNoDevice", "cudaErrorInsufficientDriver")
    reason = cudart.unavailable("cuda")
    version = cudart.version_text(LIB.runtime_version())
    assert reason.startswith(f"{cudart.runtime().path} (CUDA runtime {version}) sees no CUDA device: "
                             f"cudaGetDeviceCount failed: {caught.value.name} ({caught.value.code}): ")
    assert reason.endswith("install the NVIDIA driver (on a Jetson: JetPack)") == (LIB.driver_version() == 0)


# ---- TensorRT without torch -------------------------------------------------------------------

def test_tensorrt_dtypes_map_to_numpy_by_name():
    assert tensorrt_runtime.numpy_dtype(SimpleNamespace(name="HALF")) == np.float16
    assert tensorrt_runtime.numpy_dtype("DataType.INT64") == np.int64
    with pytest.raises(TypeError, match=r"BF16 has no numpy equivalent; supported: \['BOOL', 'FLOAT'"):
        tensorrt_runtime.numpy_dtype(SimpleNamespace(name="BF16"))


NO_TORCH = """
import json, sys
sys.modules["torch"] = None  # as on a device without torch: `import torch` raises ImportError
from runtimes import cudart, tensorrt_buffers, tensorrt_runtime
print(json.dumps({"tensorrt": tensorrt_runtime.unavailable("cuda"), "buffers": tensorrt_buffers.unavailable("cuda"),
                  "torch_has_cuda": tensorrt_buffers.torch_has_cuda(),
                  "loaded": sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] == "torch")}))
"""


def test_without_torch_the_reasons_come_from_tensorrt_and_libcudart():
    done = subprocess.run([sys.executable, "-c", NO_TORCH], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["loaded"] == [] and out["torch_has_cuda"] is False
    assert out["buffers"] == cudart.unavailable("cuda")  # libcudart answers for the buffers, torch or not
    if NO_LIB:
        assert out["buffers"] == NO_LIB and out["buffers"].startswith("libcudart not found (tried ")
    elif NO_GPU:
        assert " sees no CUDA device: cudaGetDeviceCount failed: cudaError" in out["buffers"]
    assert out["tensorrt"] == tensorrt_runtime.unavailable("cuda")
    if tensorrt_runtime.version() is None:
        assert out["tensorrt"].startswith("tensorrt is not installed: pip install 'edgeship[tensorrt]'")
    else:
        assert out["tensorrt"] == out["buffers"]
    assert "torch" not in (out["tensorrt"] or "") + (out["buffers"] or "")


# ---- on a GPU ---------------------------------------------------------------------------------

@pytest.mark.gpu
@needs_gpu
def test_pinned_round_trip_through_device_memory():
    buffers = tensorrt_buffers.CudartBuffers("cuda")
    data = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    address = buffers.allocate("x", data.shape, np.float32)
    assert address != 0
    buffers.upload("x", data)
    np.testing.assert_array_equal(buffers.download("x"), data)
    buffers.allocate("x", (2, 4), np.float16)  # rebinding frees the old pair and makes a new one
    half = np.arange(8, dtype=np.float16).reshape(2, 4)
    buffers.upload("x", half)
    np.testing.assert_array_equal(buffers.download("x"), half.astype(np.float32))
    buffers.close()


ENGINE_RUN = """
import sys
sys.modules["torch"] = None
import numpy as np
from runtimes import tensorrt_runtime
session = tensorrt_runtime.load(sys.argv[1], "cuda")
assert session.buffer_backend == "cudart" and not hasattr(session, "cuda_stream")
np.save(sys.argv[3], session.run(np.load(sys.argv[2])))
"""


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(tensorrt_runtime.unavailable("cuda") is not None,
                    reason=tensorrt_runtime.unavailable("cuda") or "")
def test_tensorrt_engine_runs_without_torch(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from runtimes import onnxruntime_runtime
    from runtimes.tensorrt_build import build_engine

    rng = np.random.default_rng(5)
    w, b = rng.standard_normal((48, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = tmp_path / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(model))
    build_engine(model, tmp_path / "linear.engine", "fp32", opt_batch=2, max_batch=4)
    batch = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    done = subprocess.run([sys.executable, "-c", ENGINE_RUN, str(tmp_path / "linear.engine"),
                           str(tmp_path / "batch.npy"), str(tmp_path / "out.npy")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reference = onnxruntime_runtime.load(model).run(batch)
    assert float(np.abs(np.load(tmp_path / "out.npy") - reference).max()) < 1e-3
