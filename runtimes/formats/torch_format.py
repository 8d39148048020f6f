"""PyTorch checkpoints: a folder of model.safetensors and model.json (spec and preprocessing).

They are the references every deployed artifact is compared with, not deployable themselves;
the pipeline rebuilds the module from model.json and the torch runtimes run it in memory.
"""
from __future__ import annotations

from pathlib import Path

from runtimes.formats.base import FormatHandler

WEIGHTS, DESCRIPTION = "model.safetensors", "model.json"


class TorchFormat(FormatHandler):
    name = "torch"
    deployable = False
    rebuilt_in_memory = True
    scoring_runtime = "torch"

    def model_files(self, path: Path) -> list[Path]:
        path = Path(path)
        return [path / WEIGHTS] if path.is_dir() else [path]


HANDLER = TorchFormat()
