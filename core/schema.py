"""Typed config files (serving.yaml, training recipes) and the one-line errors their mistakes become.

Each file is described by pydantic models built on `Section`: a key's type, default, range (`Field(ge=...)`,
`Literal[...]`) and comment (`Field(description=...)`) sit in one place, and `error_lines` turns pydantic's
`ValidationError` into one message per mistake that names the key path, the value and what is expected. A
misspelt key is answered with the nearest valid keys (difflib), not the whole list. A field whose expectation
words cannot be derived from its type says them in `json_schema_extra={"expected": ...}`.
"""

from __future__ import annotations

import difflib
import typing as t
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo


class Section(BaseModel):
    # strict: "5" is not a number and 1 is not true, as YAML already types its values; unknown keys are errors
    model_config = ConfigDict(extra="forbid", strict=True)


def _strip(kind: Any) -> Any:
    """`X | None` -> X, `Annotated[X, ...]` -> X."""
    while True:
        if t.get_origin(kind) is Annotated:
            kind = t.get_args(kind)[0]
            continue
        args = [a for a in t.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(t.get_args(kind)) == 2:  # X | None
            kind = args[0]
            continue
        return kind


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _at(root: type[BaseModel], loc: tuple) -> tuple[Any, FieldInfo | None]:
    """The type (and field) that the key path `loc` of an error points at in `root`."""
    kind: Any = root
    info: FieldInfo | None = None
    for key in loc:
        kind = _strip(kind)
        if _is_model(kind):
            info = kind.model_fields.get(str(key))
            if info is None:
                return None, None
            kind = info.annotation
        elif t.get_origin(kind) in (dict, list):
            kind = t.get_args(kind)[-1]  # an item's own range, e.g. list[Annotated[int, Field(ge=1)]]
            info = FieldInfo.from_annotation(kind) if t.get_origin(kind) is Annotated else None
        else:
            return None, None
    return _strip(kind), info


def _number(words: str, info: FieldInfo | None) -> str:
    bounds = {
        k: getattr(m, k) for m in (info.metadata if info else []) for k in ("ge", "gt", "le", "lt") if hasattr(m, k)
    }
    if "ge" in bounds and "le" in bounds:
        return f"{words} from {bounds['ge']} to {bounds['le']}"
    low = (
        f" of at least {bounds['ge']}" if "ge" in bounds else f" greater than {bounds['gt']}" if "gt" in bounds else ""
    )
    high = f" at most {bounds['le']}" if "le" in bounds else f" less than {bounds['lt']}" if "lt" in bounds else ""
    return words + low + (" and" if low and high else "") + high


def _expected(kind: Any, info: FieldInfo | None, name: str) -> str:
    """What a key must hold, in words."""
    extra = info.json_schema_extra if info is not None else None
    if isinstance(extra, dict) and "expected" in extra:
        return str(extra["expected"])
    if t.get_origin(kind) is Literal:
        values = [str(v) for v in t.get_args(kind)]
        return f"{', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else values[0]
    if _is_model(kind):
        return f"a mapping of {', '.join(kind.model_fields)}"
    if t.get_origin(kind) is dict:
        return f"a mapping of names to {name}"
    if t.get_origin(kind) is list:
        item = _strip(t.get_args(kind)[0]) if t.get_args(kind) else Any
        words = {bool: "true or false", int: "whole numbers", float: "numbers", str: "text"}
        return f"a list of {words.get(item, 'values')}" if item is not dict else "a list of mappings"
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    if kind in (int, float):
        return _number(words[kind], info)
    return words.get(kind, "a value of another type")


def path(loc: tuple) -> str:
    return ".".join(str(k) for k in loc)


def key_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of `model` as a dotted path, sections opened: ['seed', 'data.dataset', ...]."""
    keys = []
    for name, info in model.model_fields.items():
        kind = _strip(info.annotation)
        keys += key_paths(kind, f"{prefix}{name}.") if _is_model(kind) else [f"{prefix}{name}"]
    return keys


def _unknown(root: type[BaseModel], loc: tuple, name: str) -> str:
    """`unknown recipe key 'optim.lrr': did you mean optim.lr?`, or the keys valid where it stands."""
    dotted, leaf = path(loc), str(loc[-1])
    section, _ = _at(root, loc[:-1])
    local = list(section.model_fields) if _is_model(section) else []
    near = [f"{path(loc[:-1])}.{k}" if loc[:-1] else k for k in difflib.get_close_matches(leaf, local, 3, 0.6)]
    if not near and all(isinstance(k, str) for k in loc):  # a key under the wrong section: the same or a near name
        every = key_paths(root)
        near = [p for p in every if p.rsplit(".", 1)[-1] == leaf]
        if not near:
            close = difflib.get_close_matches(leaf, {p.rsplit(".", 1)[-1] for p in every}, 3, 0.6)
            near = [p for p in every if p.rsplit(".", 1)[-1] in close][:3]
    if near:
        return f"unknown {name} key '{dotted}': did you mean {' or '.join(near)}?"
    where = f"in {path(loc[:-1])}" if loc[:-1] else "at the top"
    return f"unknown {name} key '{dotted}'; valid keys {where}: {', '.join(local)}"


def error_lines(error: ValidationError, root: type[BaseModel], name: str) -> list[str]:
    """One message per mistake: the key path, the value and what is expected.

    A validator of `root` raises ValueError with a whole sentence, `{path}` standing for its section's path."""
    out: list[str] = []
    for e in error.errors(include_url=False):
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            out.append(_unknown(root, loc, name))
        elif e["type"] == "value_error":
            out.append(str(e["ctx"]["error"]).replace("{path}", path(loc)))
        elif e["type"] == "missing":
            out.append(f"{path(loc)} is missing: it must be {_expected(*_at(root, loc), str(loc[-1]))}")
        else:
            where = path(loc) or name
            out.append(
                f"{where} must be {_expected(*_at(root, loc), str(loc[-1]) if loc else name)}, got {e['input']!r}"
            )
    return out
