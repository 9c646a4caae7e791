"""Typed config files (serving.yaml, training recipes) and the one-line errors their mistakes become.

Each file is described by pydantic models built on `Section`: a key's type, default, range (`Field(ge=...)`,
`Literal[...]`) and comment (`Field(description=...)`) sit in one place, and `error_lines` turns pydantic's
`ValidationError` into one message per mistake that names the key path, the value and what is expected. A
misspelt key is answered with the nearest valid keys (difflib), not the whole list. A field whose expectation
words cannot be derived from its type says them in `json_schema_extra={"expected": ...}`.

The files are read by `load_yaml` with a loader built on `Bounded`, so that no file can hang or crash start-up:
the text, the document as loaded (aliases expanded) and its nesting are bounded, and every value an error line
quotes is cut (`shown`), as service/decode.py's `quoted` cuts a client's.
"""

from __future__ import annotations

import difflib
import reprlib
import typing as t
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent

# What a config file may hold. The shipped serving.yaml, every key commented, is 3 KB and 5 levels deep, a recipe
# smaller; the bounds leave room for hundreds of models and ensembles, and keep the pure-Python YAML parser to
# well under a second on any text within them (256 KiB of the slowest kind took about 0.3 s on a 2-core machine).
MAX_BYTES = 256 * 1024  # of text: a larger file is refused by its size, before it is read
MAX_NODES = 10_000  # values, lists and mappings as loaded: an alias counts its anchor's whole tree each time used
MAX_SCALAR_CHARS = MAX_BYTES  # characters of the values as loaded, aliases expanded: what a file could hold
MAX_DEPTH = 32  # lists and mappings inside one another: past Python's recursion, 500 levels were a traceback
SHOWN = 64  # characters of a value an error quotes: enough to recognise a misspelt name
MESSAGE_CHARS = 300  # characters of one mistake's sentence, the value in it cut
MESSAGES = 5  # mistakes named in one line; the rest are counted


class Refused(yaml.YAMLError):
    """A YAML document past one of the bounds above; the message says which."""


class Bounded:
    """Mixed into a yaml.SafeLoader subclass: while the parser's events are composed into nodes, the nodes (an
    alias counted as the whole tree of its anchor, each time it is used), their scalar text and their depth
    are counted, and the document is refused (`Refused`) as soon as one passes its bound, before anything is
    constructed: a billion-laughs document stops after a few hundred events, in bounded memory. An alias used
    inside its own anchor (a recursive document) is refused too."""

    def compose_document(self) -> t.Any:
        self._nodes, self._chars, self._depth = 0, 0, 0
        self._open: list[str | None] = []  # anchors of the collections being composed
        self._sizes: dict[int, tuple[int, int]] = {}
        return super().compose_document()  # type: ignore[misc]

    def compose_node(self, parent: t.Any, index: t.Any) -> t.Any:
        event = self.peek_event()  # type: ignore[attr-defined]
        if isinstance(event, AliasEvent):
            if event.anchor in self._open:
                raise Refused(f"the alias *{shown_text(event.anchor)} is used inside its own anchor: a recursive "
                              "document has no end")  # fmt: skip
            node = super().compose_node(parent, index)  # type: ignore[misc]
            self._count(*self._size(node))
            return node
        if isinstance(event, CollectionStartEvent):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise Refused(f"lists and mappings are nested more than {MAX_DEPTH} deep")
            self._open.append(event.anchor)
            try:
                node = super().compose_node(parent, index)  # type: ignore[misc]
            finally:
                self._open.pop()
                self._depth -= 1
            self._count(1, 0)
            return node
        node = super().compose_node(parent, index)  # type: ignore[misc]
        self._count(1, len(event.value) if isinstance(event, ScalarEvent) else 0)
        return node

    def _count(self, nodes: int, chars: int) -> None:
        self._nodes, self._chars = self._nodes + nodes, self._chars + chars
        if self._nodes > MAX_NODES:
            raise Refused(f"the document holds more than {MAX_NODES} values (an alias counts its anchor's values "
                          "each time it is used)")  # fmt: skip
        if self._chars > MAX_SCALAR_CHARS:
            raise Refused(f"the document's values hold more than {MAX_SCALAR_CHARS} characters (an alias counts its "
                          "anchor's each time it is used)")  # fmt: skip

    def _size(self, root: yaml.Node) -> tuple[int, int]:
        """(nodes, scalar characters) of the tree under `root`, aliases expanded; memoized, without recursion."""
        stack = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if id(node) in self._sizes:
                continue
            kids = _children(node)
            if children_done or not kids:
                sizes = [self._sizes[id(k)] for k in kids]
                own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
                total = (1 + sum(n for n, _ in sizes), own + sum(c for _, c in sizes))
                self._sizes[id(node)] = (min(total[0], MAX_NODES + 1), min(total[1], MAX_SCALAR_CHARS + 1))
            else:
                stack.append((node, True))
                stack += [(k, False) for k in kids if id(k) not in self._sizes]
        return self._sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str, loader: type[yaml.SafeLoader]) -> t.Any:
    """`yaml.load(text, loader)`, a text over MAX_BYTES refused (`Refused`) before it is parsed; `loader` is
    built on `Bounded`."""
    if not issubclass(loader, Bounded):
        raise TypeError(f"{loader.__name__} must be built on core.schema.Bounded")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise Refused(f"its text is {size} bytes; a config file may hold at most {MAX_BYTES}")
    return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass


_repr = reprlib.Repr()  # keyword arguments only from Python 3.12
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 3, 4, 6, 6, 6
_repr.maxstring = _repr.maxother = SHOWN


def shown(value: Any, limit: int = SHOWN) -> str:
    """A value as an error line quotes it: its repr, a long string or list cut (reprlib, so that even a huge
    value costs little to show), the whole at most about `limit` characters, with the length of a cut string."""
    text = _repr.repr(value)
    if isinstance(value, str) and len(value) > limit:
        text = f"{text} ({len(value)} characters)"
    return text if len(text) <= 2 * limit else f"{text[:limit]}..."


def shown_text(text: Any, limit: int = SHOWN) -> str:
    """A key or name as an error line prints it unquoted: cut to `limit` characters, with its length if cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def cut(message: str, limit: int = MESSAGE_CHARS) -> str:
    """One sentence of an error line in one line, at most about `limit` characters: a long value inside it is cut
    from the middle, keeping the start and the end (which say what is expected)."""
    if len(message) > limit:
        tail = limit // 3
        message = f"{message[: limit - tail]} ...[{len(message) - limit} characters cut]... {message[-tail:]}"
    return " ".join(message.split())


def counted(messages: list[str], total: int | None = None, most: int = MESSAGES) -> list[str]:
    """The first `most` of `total` messages (default: all there are), each `cut`, and how many more there were."""
    total = len(messages) if total is None else total
    out = [cut(m) for m in messages[:most]]
    return out if total <= most else [*out, f"and {total - most} more mistakes"]


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
    return ".".join(shown_text(k) for k in loc)


def key_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of `model` as a dotted path, sections opened: ['seed', 'data.dataset', ...]."""
    keys = []
    for name, info in model.model_fields.items():
        kind = _strip(info.annotation)
        keys += key_paths(kind, f"{prefix}{name}.") if _is_model(kind) else [f"{prefix}{name}"]
    return keys


def _unknown(root: type[BaseModel], loc: tuple, name: str) -> str:
    """`unknown recipe key 'optim.lrr': did you mean optim.lr?`, or the keys valid where it stands."""
    dotted, leaf = path(loc), shown_text(loc[-1])
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
    """One message per mistake: the key path, the value and what is expected; at most MESSAGES of them, each cut
    to MESSAGE_CHARS, then a count of the rest (`counted`).

    A validator of `root` raises ValueError with a whole sentence, `{path}` standing for its section's path."""
    out: list[str] = []
    for e in error.errors(include_url=False)[:MESSAGES]:
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
                f"{where} must be {_expected(*_at(root, loc), str(loc[-1]) if loc else name)}, got {shown(e['input'])}"
            )
    return counted(out, error.error_count())
