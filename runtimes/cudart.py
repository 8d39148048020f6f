"""The CUDA runtime library (libcudart) through ctypes: the few calls a TensorRT session needs.

Every TensorRT install carries libcudart (JetPack puts it under /usr/local/cuda), so a device
can run engines with Python, numpy and TensorRT alone: no torch, pycuda or cuda-python. Only
device selection, device and pinned host memory, async copies and streams are bound. Every
non-zero cudaError_t becomes a CudaError naming the call, the error's name and CUDA's own text.
Nothing is loaded at import; `runtime()` opens the library on first use.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from typing import Dict, List, Optional, Sequence

# Unversioned first (what `find_library` and a -dev package give), then the sonames of the CUDA
# majors TensorRT 8.5+ and JetPack 4-6 ship, newest first.
SONAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2")
# Where the CUDA toolkit and JetPack put the library when ld.so.conf does not list it.
LIBRARY_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib",
                "/usr/local/cuda/targets/x86_64-linux/lib")
HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind
FIX = "install the CUDA runtime that TensorRT was built against (on a Jetson it ships with JetPack)"

_int_p, _void_pp = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p)
# name -> (restype, argtypes), as declared in cuda_runtime_api.h; cudaError_t is a C enum (int).
_PROTOTYPES = {
    "cudaGetErrorName": (ctypes.c_char_p, [ctypes.c_int]),
    "cudaGetErrorString": (ctypes.c_char_p, [ctypes.c_int]),
    "cudaRuntimeGetVersion": (ctypes.c_int, [_int_p]),
    "cudaDriverGetVersion": (ctypes.c_int, [_int_p]),
    "cudaGetDeviceCount": (ctypes.c_int, [_int_p]),
    "cudaSetDevice": (ctypes.c_int, [ctypes.c_int]),
    "cudaMalloc": (ctypes.c_int, [_void_pp, ctypes.c_size_t]),
    "cudaFree": (ctypes.c_int, [ctypes.c_void_p]),
    "cudaMallocHost": (ctypes.c_int, [_void_pp, ctypes.c_size_t]),
    "cudaFreeHost": (ctypes.c_int, [ctypes.c_void_p]),
    "cudaMemcpyAsync": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                       ctypes.c_void_p]),
    "cudaStreamCreate": (ctypes.c_int, [_void_pp]),
    "cudaStreamSynchronize": (ctypes.c_int, [ctypes.c_void_p]),
    "cudaStreamDestroy": (ctypes.c_int, [ctypes.c_void_p]),
}


class CudaError(RuntimeError):
    """A CUDA runtime call returned an error; `code` and `name` are CUDA's."""

    def __init__(self, call: str, code: int, name: str, text: str) -> None:
        super().__init__(f"{call} failed: {name} ({code}): {text}")
        self.call, self.code, self.name = call, code, name


class CudartNotFound(OSError):
    """No libcudart could be loaded; the message lists what was tried."""


def library_candidates() -> List[str]:
    """Names and paths tried, in order: the loader's own pick, the sonames, then the CUDA dirs."""
    found = ctypes.util.find_library("cudart")
    names = ([found] if found else []) + list(SONAMES)
    for folder in LIBRARY_DIRS:
        names += sorted(glob.glob(os.path.join(folder, "libcudart.so*")), reverse=True)
    return list(dict.fromkeys(names))


class CudaRuntime:
    """An opened libcudart with every used function's prototype declared."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.path = path
        self._lib = lib
        for name, (restype, argtypes) in _PROTOTYPES.items():
            func = getattr(lib, name)  # AttributeError: not a CUDA runtime (caught by the opener)
            func.restype, func.argtypes = restype, argtypes

    def error_name(self, code: int) -> str:
        """CUDA's name for an error code, e.g. "cudaErrorNoDevice"."""
        return (self._lib.cudaGetErrorName(code) or b"?").decode()

    def error_string(self, code: int) -> str:
        """CUDA's description of an error code."""
        return (self._lib.cudaGetErrorString(code) or b"?").decode()

    def check(self, code: int, call: str) -> None:
        """Raise CudaError for a non-zero cudaError_t returned by `call`."""
        if code != 0:
            raise CudaError(call, code, self.error_name(code), self.error_string(code))

    def _int(self, call: str) -> int:
        value = ctypes.c_int()
        self.check(getattr(self._lib, call)(ctypes.byref(value)), call)
        return value.value

    def runtime_version(self) -> int:
        """The library's CUDA version as 1000 * major + 10 * minor (12020 for 12.2)."""
        return self._int("cudaRuntimeGetVersion")

    def driver_version(self) -> int:
        """The installed driver's CUDA version, 0 when no driver is installed."""
        return self._int("cudaDriverGetVersion")

    def device_count(self) -> int:
        """Number of CUDA devices; raises CudaError when there is no driver or device."""
        return self._int("cudaGetDeviceCount")

    def set_device(self, index: int) -> None:
        """Make device `index` current for this thread (TensorRT works on the current device)."""
        self.check(self._lib.cudaSetDevice(index), "cudaSetDevice")

    def _alloc(self, call: str, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(getattr(self._lib, call)(ctypes.byref(ptr), nbytes), f"{call}({nbytes} bytes)")
        return ptr.value or 0

    def malloc(self, nbytes: int) -> int:
        """Device memory of `nbytes`, as an integer address."""
        return self._alloc("cudaMalloc", nbytes)

    def free(self, ptr: int) -> None:
        """Release memory from `malloc`."""
        self.check(self._lib.cudaFree(ptr), "cudaFree")

    def malloc_host(self, nbytes: int) -> int:
        """Page-locked host memory of `nbytes` (what makes copies truly asynchronous)."""
        return self._alloc("cudaMallocHost", nbytes)

    def free_host(self, ptr: int) -> None:
        """Release memory from `malloc_host`."""
        self.check(self._lib.cudaFreeHost(ptr), "cudaFreeHost")

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        """Enqueue a copy of `nbytes` on `stream` (kind HOST_TO_DEVICE or DEVICE_TO_HOST)."""
        self.check(self._lib.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    def stream_create(self) -> int:
        """A new stream, as the integer handle TensorRT's execute_async_v3 takes."""
        stream = ctypes.c_void_p()
        self.check(self._lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return stream.value or 0

    def stream_synchronize(self, stream: int) -> None:
        """Wait until all work queued on `stream` has finished."""
        self.check(self._lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        """Destroy a stream from `stream_create`."""
        self.check(self._lib.cudaStreamDestroy(stream), "cudaStreamDestroy")


def open_library(candidates: Optional[Sequence[str]] = None) -> CudaRuntime:
    """The first of `candidates` (default `library_candidates()`) that loads as a CUDA runtime."""
    tried = []
    for name in library_candidates() if candidates is None else candidates:
        try:
            return CudaRuntime(ctypes.CDLL(name), name)
        except (OSError, AttributeError) as err:
            # A file that exists but will not load (wrong architecture, missing dependency) is
            # worth naming; a name the loader simply does not know is not.
            tried.append(f"{name} ({err})" if os.path.exists(name) else name)
    raise CudartNotFound(f"libcudart not found (tried {', '.join(tried) or 'nothing'}): {FIX}")


_opened: Dict[str, CudaRuntime] = {}


def runtime() -> CudaRuntime:
    """The process's libcudart, opened once; raises CudartNotFound naming what was tried."""
    if "lib" not in _opened:
        _opened["lib"] = open_library()
    return _opened["lib"]


def version_text(code: int) -> str:
    """12020 -> "12.2"."""
    return f"{code // 1000}.{code % 1000 // 10}"


def unavailable(device: str = "cuda") -> Optional[str]:
    """Why libcudart cannot run work on CUDA `device` ("cuda", "cuda:N"), or None."""
    try:
        rt = runtime()
    except CudartNotFound as err:
        return str(err)
    try:
        count = rt.device_count()
    except CudaError as err:
        try:
            no_driver = rt.driver_version() == 0
        except CudaError:
            no_driver = False
        fix = ("install the NVIDIA driver (on a Jetson: JetPack)" if no_driver else
               "check that the driver supports this CUDA runtime and the GPU is visible here")
        return (f"{rt.path} (CUDA runtime {version_text(rt.runtime_version())}) sees no CUDA "
                f"device: {err}; {fix}")
    _, _, index = device.partition(":")
    if index and not index.isdigit():
        return f"device {device!r} has a non-numeric index; use 'cuda' or 'cuda:N'"
    if count < 1 or int(index or 0) >= count:
        return f"device {device!r} does not exist: {rt.path} sees {count} CUDA device(s)"
    return None
