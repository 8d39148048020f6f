"""The benchmark's worker processes: one per runtime, each holding that runtime's models.

A row's model is loaded, scored and timed in the worker of its runtime (runtimes.worker), never
in the process that trained the models: ONNX Runtime was measured twice as slow in a process
where torch had run, and such process state is what this separation keeps out of the numbers.
torch and torch_compile get a worker each. The A/A pair's second half is loaded in a second
worker of its runtime, so the noise floor also says whether the process still matters.
Workers are started with "spawn": a fresh interpreter, nothing inherited but the environment.
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass

import numpy as np


class WorkerError(RuntimeError):
    """A request failed in a worker; the message is the worker's "Type: message"."""


class Worker:
    """One worker process and its connection."""

    def __init__(self, name: str):
        ctx = multiprocessing.get_context("spawn")
        from runtimes.worker import serve
        self.name = name
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=serve, args=(child,), name=f"edgeship-{name}", daemon=True)
        self._process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def ask(self, *request):
        self._conn.send(request)
        try:
            reply = self._conn.recv()
        except EOFError:
            raise WorkerError(f"the {self.name} worker process died (exit code "
                              f"{self._process.exitcode}) while answering {request[0]!r}") from None
        if reply[0] == "error":
            raise WorkerError(reply[1])
        return reply[1]

    def stop(self) -> None:
        if self._process.is_alive():
            try:
                self.ask("stop")
            except (WorkerError, OSError, BrokenPipeError):
                pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


@dataclass
class RemoteModel:
    """A model loaded in a worker: `run` and `chunk` as runtimes.execution.Loaded has them."""

    worker: Worker
    key: str
    runtime: str
    fixed_batch: int | None
    chunk_limit: int              # images per call the format and runtime allow (Loaded.chunk)
    cuda_events: bool
    peak_rss_scope: str

    @property
    def settings(self) -> dict:
        """How it runs, read after running (some runtimes learn theirs on the first call)."""
        return self.worker.ask("settings", self.key)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.worker.ask("run", self.key, np.ascontiguousarray(batch, dtype=np.float32))

    def sync(self) -> None:
        """Nothing to wait for: the worker synchronises before it answers a run."""

    def chunk(self, preferred: int) -> int:
        return self.fixed_batch or min(preferred, self.chunk_limit)

    def time(self, batch: np.ndarray, warmup: int, min_iterations: int, min_seconds: float):
        """runtimes.harness.measure of this model in its worker: a LatencyStats."""
        return self.worker.ask("time", self.key, np.ascontiguousarray(batch, dtype=np.float32),
                               warmup, min_iterations, min_seconds)


class Workers:
    """The worker processes of one benchmark, started on first use; a context manager that
    stops them all."""

    def __init__(self):
        self._workers: dict[str, Worker] = {}
        self._count = 0

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        for w in self._workers.values():
            w.stop()
        self._workers.clear()

    def worker(self, name: str) -> Worker:
        if name not in self._workers:
            self._workers[name] = Worker(name)
        return self._workers[name]

    def open(self, process: str, model, fmt: str, runtime: str, device: str, threads: int,
             precision: str, pin: bool) -> RemoteModel:
        """Load `model` (a file path, or a picklable in-memory model) in worker `process`."""
        worker = self.worker(process)
        self._count += 1
        key = f"m{self._count}"
        info = worker.ask("open", key, model, fmt, runtime, device, threads, precision, pin)
        return RemoteModel(worker, key, runtime, info["fixed_batch"], info["chunk_limit"],
                           info["cuda_events"], info["peak_rss_scope"])
