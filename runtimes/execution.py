"""The one path that runs a model: parity checks, quantization scoring, bundle checks and the
benchmark all load and run models through `open_model`, so what a check passed is exactly what
the benchmark measures.

`open_model` asks the format's handler which runtime serves it by default and whether its batch
axis is static, asks the runtime how it pins precision, and returns a `Loaded` model whose `run`
accepts any number of images (sliced, and padded, to a static batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtimes import formats

RunFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Loaded:
    """A model loaded in one runtime on one device."""

    session: Any                  # the runtime's Session (run / sync)
    runtime: str
    device: str
    format: str
    fixed_batch: int | None       # the static batch of the model file, if it has one
    threads: int | None = None

    @property
    def settings(self) -> dict:
        """How it runs (threads, precision, compile time, ...), for reports; read after running,
        since some runtimes only learn theirs on the first call."""
        return {"threads": self.threads, **getattr(self.session, "settings", {})}

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits of every image in `batch`, in calls of the model's static batch when it has one."""
        return run_in_chunks(self.session.run, batch, self.fixed_batch)

    def sync(self) -> None:
        self.session.sync()

    def chunk(self, preferred: int) -> int:
        """Images per call when scoring: the static batch, else `preferred` within the limits of
        the format (an engine's profile) and of the runtime (one compiled per input shape)."""
        import runtimes
        limits = (formats.get(self.format).max_scoring_batch,
                  getattr(runtimes.get(self.runtime), "MAX_SCORING_BATCH", None))
        return self.fixed_batch or min([preferred, *(n for n in limits if n)])


def open_model(model: Any, fmt: Any, runtime: str | None = None, device: str | None = None,
               threads: int | None = None, precision: str = "fp32", pin: bool = True,
               fixed_batch: int | None = None) -> Loaded:
    """Load `model` (a file path, or an in-memory model the runtime accepts) of format `fmt`.

    `runtime` defaults to the format's scoring runtime and `device` to the runtime's default.
    With `pin`, runtimes that would otherwise compute in a precision of their own choosing
    (OpenVINO picks bf16 on CPUs that have it) compute in the artifact's `precision`, so the
    numbers describe the file, not the device's policy. `fixed_batch` gives the model's batch axis
    when the caller already knows it (a bundle's model.json records it; 0: dynamic), so a device
    without the format's library (onnx) need not read the file for it.
    """
    import runtimes
    handler = formats.get(fmt)
    module = runtimes.get(runtime or handler.scoring_runtime)
    if handler.name not in module.FORMATS:
        raise ValueError(f"runtime {module.NAME} cannot run {handler.name} models; runtimes that "
                         f"can: {', '.join(m.NAME for m in runtimes.for_format(handler.name)) or 'none'}")
    device = device or module.DEFAULT_DEVICE
    pinning = getattr(module, "pinned_options", None)
    options = pinning(precision, device) if pin and pinning else {}
    session = module.load(model, device, threads, **options)
    if fixed_batch is not None:
        fixed = fixed_batch or None
    else:
        fixed = handler.static_batch(model) if isinstance(model, (str, Path)) else None
    return Loaded(session, module.NAME, device, handler.name, fixed, threads)


def run_in_chunks(fn: RunFn, batch: np.ndarray, fixed_batch: int | None) -> np.ndarray:
    """Run `fn` over `batch`, in slices of `fixed_batch` when the model's batch size is fixed.

    A short last slice is padded by repeating its last sample and the padding's outputs dropped.
    """
    if not fixed_batch or fixed_batch == len(batch):
        return np.asarray(fn(batch))
    outs = []
    for start in range(0, len(batch), fixed_batch):
        part = batch[start:start + fixed_batch]
        n = len(part)
        if n < fixed_batch:
            part = np.concatenate([part, np.repeat(part[-1:], fixed_batch - n, axis=0)])
        outs.append(np.asarray(fn(part))[:n])
    return np.concatenate(outs)
