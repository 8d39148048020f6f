"""YAML for configs, read strictly: UTF-8 only, no duplicate keys, no alias bombs, one-line errors.

`yaml.safe_load` keeps the last of two equal keys without a word, and a few lines of anchors and
aliases ("billion laughs") expand into billions of values once validated or dumped. Both are
refused here, with the line they are on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

MAX_ALIASES = 100          # a hand-written config uses a handful; thousands means a generated bomb
MAX_VALUES = 100_000       # values after aliases expand; the shipped configs hold a few hundred
SHOWN = 80                 # characters of a value an error message quotes


def clip(text: str, limit: int = SHOWN) -> str:
    """`text` cut to `limit` characters, marked with '...' where cut."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clip_path(path: str, limit: int = SHOWN) -> str:
    """`path` cut from the front to `limit` characters, so the file's own name stays in view."""
    return path if len(path) <= limit else "..." + path[-(limit - 3):]


def short(value: Any, limit: int = SHOWN) -> str:
    """`value` as an error message quotes it: YAML spelling for booleans and null, repr for the
    rest, cut to `limit` characters so a huge value cannot flood the terminal."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = "null" if value is None else repr(value)
        if isinstance(value, (list, dict)):         # as YAML would spell it: true, not True
            try:
                text = json.dumps(value)
            except (TypeError, ValueError):
                pass
    return clip(text, limit)


class YamlError(ValueError):
    """A YAML text that cannot be used as a config; the message is one line, without the source."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and refuses a key given twice in one mapping."""

    def __init__(self, stream):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise YamlError(f"more than {MAX_ALIASES} aliases (*name), at line {mark.line + 1}; "
                                "a config needs a handful: write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # '<<: *base' may be overridden below it
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise YamlError(f"key {short(key)} appears twice in one mapping (lines "
                                    f"{seen[key]} and {line}); keep one")
                seen[key] = line
            except TypeError:                               # an unhashable key: SafeLoader says so
                break
        return super().construct_mapping(node, deep)


def _expanded(value: Any, memo: dict, active: set) -> int:
    """How many values `value` holds once every alias is copied out (shared nodes counted once
    per use, computed once per node)."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) in active:
        raise YamlError("an alias refers to a mapping or list that contains it (a cycle); "
                        "write the values out")
    if id(value) not in memo:
        active.add(id(value))
        children = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
        memo[id(value)] = 1 + sum(_expanded(c, memo, active) for c in children)
        active.discard(id(value))
    return memo[id(value)]


def _one_line(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def parse(text: str) -> Any:
    """The value of one YAML document, read strictly (see the module docstring); YamlError else."""
    try:
        value = yaml.load(text, Loader=_StrictLoader)   # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise YamlError(f"not valid YAML: {_one_line(e)}") from None
    except RecursionError:
        raise YamlError("nested too deeply to be a config") from None
    try:
        size = _expanded(value, {}, set())
    except RecursionError:
        raise YamlError("nested too deeply to be a config") from None
    if size > MAX_VALUES:
        raise YamlError(f"aliases expand to {size:,} values (at most {MAX_VALUES:,}); "
                        "a config this large is an alias bomb, not a config")
    return value


def read_text(path: Path) -> str:
    """A config file's text: UTF-8 (a BOM is allowed), else YamlError naming the first bad byte."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise YamlError(f"cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise YamlError(f"is not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} (offset "
                        f"{e.start}); save the file as UTF-8") from None
