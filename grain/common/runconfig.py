"""The one configuration mechanism of every stage: run files + overrides → a validated typed config.

    cfg = load(AnnotateConfig, [Layer.from_file("configs/annotate-tiny.yaml"),
                                *Layer.from_sets(["models.box_threshold=3e-1"])])

A stage's config is a tree of plain ``@dataclass`` classes (attribute access, ``dataclasses.asdict``,
``replace`` keep working); pydantic v2 validates the merged mapping into it (``TypeAdapter``), in lax
mode, so every source gets the same coercion: ``3e-1`` → 0.3 for a float field (YAML 1.1 leaves it a
string), ``"true"`` → True, ``8`` → "8" for a string field (short hex revisions). Each class sets
``__pydantic_config__ = STRICT_KEYS``: an unknown key is an error.

Layers are merged in order, mapping by mapping; each leaf remembers the layer that set it, so an error
names the key, the value and its source::

    models.box_threshold: expected a number, got 'abc' (from --set models.box_threshold=abc)

Sources: a run file's path, ``--set KEY=VALUE`` items (one layer each, values parsed as YAML), a flow's
``overrides`` parameter (nested or dotted keys), or a stage's own command-line flags.
``describe(cls)`` lists every key with its type, default and the comment that explains it
(``grain config show STAGE``). Imports only pydantic and yaml (grain stays free of the stages).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

# Every config dataclass sets ``__pydantic_config__ = STRICT_KEYS``.
STRICT_KEYS = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class ConfigError(ValueError):
    """A run file, flag or override is invalid; the message names the key, the value and the source."""


@dataclass
class Layer:
    """One source of settings: a nested mapping and where it came from (shown in errors)."""

    data: dict
    source: str

    @classmethod
    def from_file(cls, path: str | os.PathLike, section: str | None = None) -> "Layer":
        """A YAML run file (its ``section:`` mapping when the file has one, else the whole file)."""
        p = str(path)
        if not os.path.isfile(p):
            raise ConfigError(f"config file {p!r} does not exist")
        try:
            with open(p, encoding="utf-8") as f:
                doc = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{p}: not a readable YAML run file ({e})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{p}: a run file must be a YAML mapping, got {type(doc).__name__}")
        if section is not None and section in doc:
            doc = doc[section]
            if not isinstance(doc, dict):
                raise ConfigError(f"{p}: the {section!r} section must be a mapping, got {type(doc).__name__}")
        return cls(doc, p)

    @classmethod
    def from_sets(cls, items: Sequence[str] | None, source: str = "--set") -> list["Layer"]:
        """``["run.batch_size=8", ...]`` → one layer per item, each named ``--set KEY=VALUE``."""
        return [cls(parse_set_item(item), f"{source} {item}") for item in items or ()]

    @classmethod
    def from_overrides(cls, overrides: Mapping | None, source: str = "overrides") -> "Layer":
        """A mapping of nested and/or dotted keys (a flow's ``overrides`` parameter)."""
        if overrides is None:
            return cls({}, source)
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"{source}: expected a mapping of config keys to values, got {type(overrides).__name__}")
        out: dict = {}
        for key, value in overrides.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{source}: override key {key!r} must be a non-empty string")
            if isinstance(value, Mapping):
                value = cls.from_overrides(value, source).data
            out = merge(out, nest(key, value))
        return cls(out, source)


def nest(dotted: str, value) -> dict:
    """``("a.b", 1)`` → ``{"a": {"b": 1}}``."""
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{dotted!r}: not a dotted key (e.g. run.batch_size)")
    for p in reversed(parts):
        value = {p: value}
    return value


def flatten_overrides(overrides: Mapping | None, prefix: str = "") -> dict:
    """``{"run": {"batch_size": 4}, "models.mllm": "tiny"}`` → ``{"run.batch_size": 4, "models.mllm": "tiny"}``.

    Nested mappings and dotted keys may be mixed; the inverse of ``nest``, beside it so the two directions
    agree. The flows flatten a flow's ``overrides`` to add their own keys (``data.path``, ``output``);
    the stages' loaders take the result as is (``Layer.from_overrides``).
    """
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping of config keys to values, got {type(overrides).__name__}")
    out = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"override key {key!r} must be a non-empty string")
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping) and value:
            out.update(flatten_overrides(value, dotted))
        else:
            out[dotted] = value
    return out


def parse_set_item(item: str) -> dict:
    """``"optim.lr=3e-4"`` → ``{"optim": {"lr": "3e-4"}}``: the value parsed as YAML (``8``, ``true``,
    ``null``, ``[a, b]``, ``{k: v}``); the field's type then coerces it (``"3e-4"`` → 3e-4)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE (key=value), e.g. run.batch_size=8")
    dotted, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
    return nest(dotted, value)


def merge(base: dict, over: Mapping) -> dict:
    """``over`` laid over ``base``, mapping by mapping (a new dict; inputs untouched)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _leaves(data: Mapping, prefix: tuple = ()):
    for k, v in data.items():
        key = (*prefix, str(k))
        yield key
        if isinstance(v, Mapping):
            yield from _leaves(v, key)


_SHORT = {"int": "expected an integer", "float": "expected a number", "bool": "expected true/false",
          "string": "expected a string", "list": "expected a list", "dict": "expected a mapping",
          "dataclass": "expected a mapping", "tuple": "expected a list", "too_short": "too few items",
          "too_long": "too many items", "literal_error": "expected one of"}


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "unexpected_keyword_argument":
        return f"unknown key {err['loc'][-1]!r}"
    if kind == "missing" or kind == "missing_argument":
        return "required, not set by the run file, flags or overrides"
    if kind == "value_error":  # a cross-field check of the class itself (__post_init__)
        return str(err.get("ctx", {}).get("error", err["msg"]))
    head = next((v for k, v in _SHORT.items() if kind == k or kind.startswith(k + "_")), None)
    if kind == "literal_error":
        head = err["msg"].replace("Input should be", "expected")
    elif head is None:
        head = err["msg"][0].lower() + err["msg"][1:]
    return f"{head}, got {err.get('input')!r}"


def _fmt(loc: tuple, msg: str, sources: dict, default: str, prefix: str = "") -> str:
    key = (prefix + ".".join(str(p) for p in loc if not isinstance(p, int))).rstrip(".") or "<config>"
    if msg.startswith("required, not set"):
        return f"{key}: {msg}"
    if not loc:  # the whole section (a class's own cross-field check): every source that contributed
        head = f"{key}: " if key != "<config>" else ""
        return f"{head}{msg} (from {', '.join(dict.fromkeys(sources.values())) or default})"
    src = next((sources[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in sources), default)
    return f"{key}: {msg} (from {src})"


def load(cls, layers: Sequence[Layer], checks: typing.Callable | None = None, prefix: str = ""):
    """Merge ``layers`` in order and validate them into ``cls``; ConfigError naming key, value, source.

    ``checks(cfg)`` may return ``[(dotted key, message), ...]`` (cross-field and schema-limit checks);
    each is reported with the source of that key. ``prefix``: prepended to keys in messages (a section
    validated on its own, e.g. ``model.``)."""
    data: dict = {}
    sources: dict = {}
    for layer in layers:
        if not isinstance(layer.data, Mapping):
            raise ConfigError(f"{layer.source}: expected a mapping, got {type(layer.data).__name__}")
        data = merge(data, layer.data)
        for key in _leaves(layer.data):
            sources[key] = layer.source
    default = "defaults"
    try:
        cfg = _adapter(cls).validate_python(data)
    except ValidationError as e:
        msgs = [_fmt(tuple(err["loc"]), _message(err), sources, default, prefix) for err in e.errors()]
        raise ConfigError("; ".join(msgs)) from None
    problems = list(checks(cfg)) if checks else []
    if problems:
        raise ConfigError("; ".join(_fmt(tuple(k.split(".")), m, sources, default, prefix) for k, m in problems))
    return cfg


_ADAPTERS: dict = {}


def _adapter(cls) -> TypeAdapter:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


# --- describe: every key with its type, default and meaning ------------------------------------------

_FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+(?:=.*?)?(?:#\s*(?P<c>.*))?$")


def field_help(cls) -> dict[str, str]:
    """Field name → its comment in the class source (the trailing ``# ...``, else the comment block
    just above the field; the first sentence of either)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, block = {}, []
    for line in lines[1:]:
        s = line.strip()
        if s.startswith("#"):
            block.append(s.lstrip("# "))
            continue
        m = _FIELD.match(line)
        if m and not s.startswith(("def ", "@", "return")):
            text = m.group("c") or " ".join(block)
            text = text.split(". ")[0].strip()
            out.setdefault(m.group(1), text if len(text) <= 120 else text[:119].rstrip() + "…")
        block = []
    return out


def _type_name(tp) -> str:
    s = re.sub(r"<class '([\w.]+)'>", r"\1", str(tp).replace("typing.", ""))
    return re.sub(r"^Optional\[(.*)\]$", r"\1 | None", s)


def describe(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``[(dotted key, type, default, meaning), ...]`` for every leaf of a config dataclass tree."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append((key, _type_name(tp), repr(default) if default != "(required)" else default, helps.get(f.name, "")))
    return rows


def format_rows(rows: Sequence[tuple[str, str, str, str]], header: tuple[str, str, str, str] | None = None) -> list[str]:
    """``describe`` rows as aligned text lines (the one table of ``grain config show``). The column widths
    come from ``rows`` alone; an optional ``header`` line is laid out with them."""
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [header, *rows] if header else list(rows)
    return [f"{k.ljust(w[0])}  {t.ljust(w[1])}  {d.ljust(w[2])}  {h}".rstrip() for k, t, d, h in lines]


def show(cls, title: str = "") -> str:
    """``describe(cls)`` as aligned text lines."""
    head = [title] if title else []
    return "\n".join(head + format_rows(describe(cls)))
