"""The `targets:` section: machines a benchmark also measures on, this one or one reached over SSH.

Connection fields (host, user, port, identity_file, known_hosts) and the remote paths may name
environment variables as `${NAME}`, so one config serves every CI machine while the address of the
lab's Jetson stays in the CI's secrets. A variable that is not set is a config error naming it.
"""
from __future__ import annotations

import os
import re
from enum import Enum
from typing import Annotated, Optional, Union

from pydantic import AfterValidator, Field, field_validator, model_validator

from pipeline.config_strict import Strict

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_DEVICE = r"^[a-z0-9][a-z0-9:._]{0,31}$"


class TargetKind(str, Enum):
    local = "local"      # this machine, through the same runner and work folder as a remote one
    ssh = "ssh"


class TargetRuntime(str, Enum):
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


def expand_env(value: str, where: str) -> str:
    """`value` with every `${NAME}` replaced by that environment variable; ValueError naming the
    variable when it is not set."""
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ValueError(f"{where} names the environment variable {name}, which is not set; "
                             f"export {name}=... (or write the value in the config)")
        return os.environ[name]
    return _VAR.sub(sub, value)


class Target(Strict):
    """One machine the benchmark measures the exported bundles on."""

    name: str = Field(pattern=_NAME, description="its name in rows ('<name>/<device>') and budgets")
    kind: TargetKind = TargetKind.ssh
    host: Optional[str] = Field(None, description="ssh host or ~/.ssh/config alias; ${VAR} expands")
    user: Optional[str] = None
    port: Optional[Union[int, str]] = Field(None, description="ssh port (1-65535); ${VAR} expands")
    identity_file: Optional[str] = Field(None, description="private key file (ssh -i)")
    known_hosts: Optional[str] = Field(None, description="known_hosts file the host key must be in "
                                       "(default: ssh's own, ~/.ssh/known_hosts)")
    python: str = Field("python3", description="interpreter on the target (needs numpy and the runtimes)")
    workdir: str = Field("~/.edgeship", description="work folder on the target: runner, bundles, "
                         "val samples, engine cache")
    runtimes: list[TargetRuntime] = Field(default_factory=lambda: [TargetRuntime.onnxruntime],
                                          min_length=1)
    devices: list[str] = Field(default_factory=lambda: ["cpu"], min_length=1,
                               description="devices the runtimes use there: cpu, cuda, ...")
    required: bool = Field(False, description="true: `check` fails when this target was not measured")
    timeout_s: float = Field(1800.0, gt=0, description="longest a whole measurement there may take "
                             "(TensorRT engine builds included)")
    connect_timeout_s: int = Field(10, ge=1, le=300)

    @field_validator("host", "user", "identity_file", "known_hosts", "python", "workdir", mode="before")
    @classmethod
    def _expand(cls, v, info):
        return expand_env(v, f"targets.{info.field_name}") if isinstance(v, str) else v

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v):
        if isinstance(v, str):
            v = expand_env(v, "targets.port")
            if not v.strip().isdigit():
                raise ValueError(f"targets.port must be a port number, got {v!r}")
            v = int(v)
        if v is not None and not (isinstance(v, int) and 1 <= v <= 65535):
            raise ValueError(f"targets.port must be 1-65535, got {v!r}")
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v):
        bad = [d for d in v if not re.match(_DEVICE, d)]
        if bad:
            raise ValueError(f"targets.devices {bad}: a device is a short lower-case name such as "
                             "'cpu', 'cuda' or 'cuda:0'")
        return v

    @model_validator(mode="after")
    def _address(self):
        if self.kind == TargetKind.ssh and not self.host:
            raise ValueError(f"target '{self.name}' is kind ssh and needs a host (an address or "
                             "a ~/.ssh/config alias, e.g. host: ${EDGESHIP_JETSON_HOST})")
        for field in ("host", "user"):
            value = getattr(self, field)
            # Such a value would read as an ssh option or split into several arguments.
            if value is not None and (value.startswith("-") or re.search(r"\s", value) or not value):
                raise ValueError(f"target '{self.name}': {field} {value!r} must not be empty, start "
                                 "with '-' or hold spaces")
        return self


def _unique(targets: list[Target]) -> list[Target]:
    names = [t.name for t in targets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"targets: the name(s) {', '.join(dup)} appear more than once; each "
                         "target needs its own name (rows and budgets are keyed by it)")
    return targets


Targets = Annotated[list[Target], AfterValidator(_unique)]
