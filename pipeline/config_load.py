"""Read a YAML config, apply --set overrides, validate, and explain every mistake in one line each."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config import Config
from runtimes import errors


class ConfigError(ValueError, errors.ConfigError):
    """A config file, key, value or --set override that cannot be used; the message names it."""


def _submodel(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    ann = getattr(model.model_fields.get(name), "annotation", None)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _model_at(path: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in path:
        model = model and _submodel(model, str(part))
    return model


def _dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key below a section, nested ones dotted ('train.epochs')."""
    out = []
    for name in model.model_fields:
        out.append(prefix + name)
        sub = _submodel(model, name)
        if sub:
            out.extend(_dotted_keys(sub, prefix + name + "."))
    return out


def _closest(wrong: str, parent: tuple) -> str | None:
    """The valid key under `parent` whose last part reads most like `wrong`."""
    model = _model_at(parent)
    if model is None:
        return None
    keys = _dotted_keys(model)
    score = {k: difflib.SequenceMatcher(None, wrong, k.rsplit(".", 1)[-1]).ratio() for k in keys}
    best = max(keys, key=lambda k: (score[k], -k.count(".")))
    return ".".join([*map(str, parent), best]) if score[best] >= 0.5 else None


def _expected(err: dict) -> str:
    kind = err["type"]
    names = {"int_parsing": "an integer", "int_type": "an integer", "float_parsing": "a number",
             "float_type": "a number", "bool_parsing": "true or false", "bool_type": "true or false",
             "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
             "model_type": "a mapping", "enum": "one of " + str(err.get("ctx", {}).get("expected", ""))}
    return names.get(kind, err["msg"])


def explain(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            close = _closest(str(loc[-1]), loc[:-1])
            model = _model_at(loc[:-1])
            valid = ", ".join(model.model_fields) if model else "?"
            hint = f"; did you mean '{close}'?" if close else ""
            lines.append(f"{source}: unknown key '{dotted}'{hint} (valid keys here: {valid})")
        elif err["type"] == "value_error":
            lines.append(f"{source}: {err['msg'].removeprefix('Value error, ')}")
        else:
            value = err.get("input")
            lines.append(f"{source}: {dotted} = {value!r} is invalid: expected {_expected(err)}"
                         + ("" if err["type"] in ("int_parsing", "float_parsing", "bool_parsing",
                                                  "enum", "string_type", "int_type", "float_type",
                                                  "bool_type") else f" ({err['msg']})"))
    return "\n".join(lines)


def _set(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.setdefault(p, {}), dict):
            raise ConfigError(f"--set {dotted}: '{p}' is not a section")
        node = node[p]
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}' must look like key.path=value, e.g. prune.ratio=0.4")
        dotted, text = item.split("=", 1)
        _set(raw, dotted.strip(), yaml.safe_load(text) if text.strip() else None)
    return raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """The validated config from a YAML file (or defaults when path is None) and `--set` overrides."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist (try configs/default.yaml)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (run, data, ...)")
    raw = apply_overrides(raw, list(overrides))
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        where = source + (" (with --set " + ", ".join(overrides) + ")" if overrides else "")
        raise ConfigError(explain(e, where)) from None
