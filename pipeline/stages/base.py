"""The stage contract: a name, a hand-bumped version, the config it reads, and a run function."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.artifact import Artifact
from pipeline.config import Config
from pipeline.store import Manifest


@dataclass
class Context:
    """What a stage gets: the config, its upstream manifests, and a staging folder to write into."""

    cfg: Config
    inputs: dict[str, Manifest]
    out_dir: Path
    store_root: Path

    def input(self, stage: str) -> Manifest:
        return self.inputs[stage]


@dataclass
class Result:
    outputs: dict[str, Artifact]
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One stage; its place in the order and its one-line help are in pipeline.stage_order."""

    name: str
    version: int
    deps: tuple[str, ...]
    params: Callable[[Config], dict]      # the config slices that decide this stage's output
    run: Callable[[Context], Result]
    machine_dependent: bool = False       # measured results: the environment joins the cache key
    # Side effects outside the store (e.g. the CI's JUnit file), redone on cache hits as well.
    publish: Callable[[Manifest, Config], None] | None = None
