"""Read a YAML config, apply --set overrides, validate, and explain every mistake in one line each."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline import config_yaml
from pipeline.config import Config
from pipeline.config_limits import check_sizes
from pipeline.config_yaml import clip, clip_path, short
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


_TYPES = {"int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
          "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
          "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
          "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
          "model_attributes_type": "a mapping"}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _constraint(err: dict) -> str:
    """What the value must be, said once (pydantic's own message only for kinds not named here)."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _TYPES:
        return "expected " + _TYPES[kind]
    if kind == "enum":
        return "expected one of " + str(ctx.get("expected", ""))
    if kind == "bool_for_number":
        return f"expected {ctx['expected']}, not true/false (YAML reads yes/no/on/off as booleans)"
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        bound = ctx.get(name)
        return f"must be {op} {bound:g}" if isinstance(bound, float) else f"must be {op} {bound}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"takes at most {ctx.get('max_length')} item(s)"
    if kind == "missing":
        return "is required"
    msg = err["msg"]
    return msg[:1].lower() + msg[1:]


def _dotted(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else ("." if i else "") + str(p)
                   for i, p in enumerate(loc))


def explain(e: ValidationError, source, overrides: dict[str, str] | None = None) -> str:
    """One line per error: where it came from (the file, or the --set that gave the key), the key,
    the value (cut to 80 characters) and what it must be."""
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        dotted = _dotted(loc)
        where = _origin(dotted, source, overrides or {})
        if err["type"] == "extra_forbidden":
            close = _closest(str(loc[-1]), loc[:-1])
            model = _model_at(loc[:-1])
            valid = ", ".join(model.model_fields) if model else "?"
            hint = f"; did you mean '{close}'?" if close else ""
            lines.append(f"{where}: unknown key '{dotted}'{hint} (valid keys here: {valid})")
        elif err["type"] == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            if not msg.startswith(dotted):        # a field's own check that does not name it
                msg = f"{dotted} = {short(err.get('input'))} is invalid: {msg}"
            lines.append(f"{where}: {msg}")
        else:
            lines.append(f"{where}: {dotted} = {short(err.get('input'))} is invalid: {_constraint(err)}")
    return "\n".join(dict.fromkeys(lines))          # a union's members can repeat one complaint


def _origin(dotted: str, source: str, overrides: dict[str, str]) -> str:
    """The --set item that gave `dotted` (or the section holding it), else the config's source."""
    for key, item in reversed(overrides.items()):
        if dotted == key or dotted.startswith(key + ".") or dotted.startswith(key + "[") \
                or key.startswith(dotted + "."):
            return f"--set {clip(item)}"
    return source


def _set(raw: dict, dotted: str, value: Any, item: str) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set {clip(item)}: '{clip(dotted)}' is not a key path like prune.ratio")
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.setdefault(p, {}), dict):
            raise ConfigError(f"--set {clip(item)}: '{p}' is not a section")
        node = node[p]
    node[parts[-1]] = value


def _parse_overrides(overrides: list[str]) -> dict[str, tuple[str, Any]]:
    """dotted key -> (the --set item as given, its YAML value); the last of a key wins, as on a
    command line."""
    out: dict[str, tuple[str, Any]] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{clip(item)}' must look like key.path=value, e.g. prune.ratio=0.4 "
                              "(make: separate SET items with ';' when a value holds spaces)")
        dotted, text = item.split("=", 1)
        try:
            value = config_yaml.parse(text) if text.strip() else None
        except config_yaml.YamlError as e:
            raise ConfigError(f"--set {clip(item)}: the value {clip(repr(text))} is {e}; give a "
                              "YAML value (a number, true, [1, 2]) or quote text: key='\"...\"'") from None
        out.pop(dotted.strip(), None)
        out[dotted.strip()] = (item, value)
    return out


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file '{clip_path(str(path))}' does not exist (try configs/default.yaml)")
    try:
        text = config_yaml.read_text(path)
    except config_yaml.YamlError as e:
        raise ConfigError(f"config file '{clip_path(str(path))}' {e}") from None
    try:
        raw = config_yaml.parse(text)
    except config_yaml.YamlError as e:
        raise ConfigError(f"{path}: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run, data, ...), "
                          f"not {short(raw)}")
    return raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """The validated config from a YAML file (or defaults when path is None) and `--set` overrides."""
    source = "defaults" if path is None else str(path)
    raw = {} if path is None else _read(Path(path))
    parsed = _parse_overrides(list(overrides))
    for dotted, (item, value) in parsed.items():
        _set(raw, dotted, value, item)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(explain(e, source, {k: item for k, (item, _) in parsed.items()})) from None
    too_big = check_sizes(cfg)
    if too_big:
        raise ConfigError(f"{source}: {too_big}")
    return cfg
