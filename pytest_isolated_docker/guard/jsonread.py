"""Read request JSON the way dockerd (Go's ``encoding/json``) reads it, or refuse it.

Go matches an object key to a struct field by exact name first, then ignoring case (and folding
a few non-ASCII letters: the Kelvin sign is a ``k``, the long s an ``s``; since Go 1.21 any rune
whose upper-then-lower case is an ASCII letter); of repeated keys the last one wins (objects
merged into, lists replaced). So ``{"hostconfig": {"privileged": true}}`` creates a privileged
container, and a guard reading exact key names is bypassed.

Here a body is first parsed keeping every key (:func:`load`), then *resolved* against a schema of
the structs dockerd decodes it into (:func:`resolve`): each key is matched as Go matches it, and
the result has one canonical key per field. Whatever would be read two ways is refused:

* keys naming the same field (repeats, case variants) whose values differ;
* keys naming a field of a newer engine than the schema knows, with a non-empty value (with an
  empty one they are dropped);
* invalid UTF-8, lone surrogates, ``NaN``, a BOM, anything after the value.

The guard judges the resolved value and forwards *it*, re-encoded: the engine reads exactly the
canonical keys the guard judged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from .rules import Refused


class Obj(list[tuple[str, Any]]):
    """A JSON object as parsed: every (key, value) pair, in order, repeats kept."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load(body: bytes) -> Any:
    """Parse ``body`` strictly (UTF-8, no BOM, one value), objects as :class:`Obj`."""
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=Obj, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused("ambiguous-json", f"the body is not strict UTF-8 JSON ({exc})") from None
    _check_strings(value)
    return value


def _check_strings(value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(
                "ambiguous-json", "a string holds a lone surrogate (Go reads it as U+FFFD)"
            ) from None
    elif isinstance(value, Obj):
        for key, item in value:
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def fold(key: str) -> str:
    """``key`` as Go compares it with a field name: ASCII lower case, and every other letter
    whose upper-then-lower case is ASCII (Kelvin sign, long s, dotless i, ...) folded to it."""
    out = []
    for char in key:
        if char.isascii():
            out.append(char.lower())
            continue
        folded = char.upper().lower()
        out.append(folded if folded.isascii() else char)
    return "".join(out)


@dataclass(frozen=True)
class Struct:
    """A Go struct: its JSON field names and the schema of each."""

    name: str
    fields: Mapping[str, Schema]

    def field_for(self, key: str) -> str | None:
        """The field ``key`` sets, as Go finds it: exact name first, then folded."""
        if key in self.fields:
            return key
        folded = fold(key)
        for name in self.fields:
            if fold(name) == folded:
                return name
        return None


@dataclass(frozen=True)
class MapOf:
    """A Go map: keys are data (exact, case kept); values of one schema."""

    value: Schema


@dataclass(frozen=True)
class ListOf:
    """A Go slice of one schema."""

    item: Schema


class AnyValue:
    """A value the guard does not look into (still read strictly: keys that fold alike and
    disagree are refused, since the guard cannot tell a struct from a map there)."""


ANY = AnyValue()
Schema: TypeAlias = Struct | MapOf | ListOf | AnyValue


def is_empty(value: Any) -> bool:
    """Go's zero values as JSON: null, false, 0, "", [], {}."""
    return value is None or value is False or value == 0 or value in ("", [], {}) or value == Obj()


def plain(value: Any) -> Any:
    """``value`` with every object as a dict (repeats must agree; case variants too)."""
    return resolve(value, ANY, "body")


def _group(pairs: Obj, key_of: Any, where: str) -> dict[str, list[tuple[str, Any]]]:
    groups: dict[str, list[tuple[str, Any]]] = {}
    for key, value in pairs:
        groups.setdefault(key_of(key), []).append((key, value))
    return groups


def _one(options: list[tuple[str, Any]], schema: Schema, where: str) -> Any:
    values = [resolve(value, schema, where) for _, value in options]
    if any(value != values[0] for value in values[1:]):
        keys = ", ".join(repr(key) for key, _ in options)
        raise Refused(
            "ambiguous-json",
            f"{where} is given {len(options)} times ({keys}) with different values; dockerd "
            "would read only the last (merged into the first)",
        )
    return values[-1]


def resolve(value: Any, schema: Schema, where: str = "body") -> Any:
    """``value`` (from :func:`load`) read as Go reads it into ``schema``: dicts with canonical
    keys. Raises :class:`Refused` for what would be read two ways, or for a non-empty field the
    schema does not know."""
    if isinstance(schema, Struct):
        if value is None:
            return None
        if not isinstance(value, Obj):
            return _no_obj(value, schema, where)
        out: dict[str, Any] = {}
        for name, options in _group(value, lambda k: schema.field_for(k) or "", where).items():
            if name:
                out[name] = _one(options, schema.fields[name], f"{where}.{name}")
                continue
            for key, unknown in options:
                if not is_empty(plain(unknown)):
                    raise Refused(
                        "unknown-field",
                        f"{where}.{key} is not a field of {schema.name} the guard knows; a newer "
                        "engine may honour it",
                    )
        return out
    if isinstance(schema, MapOf):
        if not isinstance(value, Obj):
            return _no_obj(value, schema, where)
        return {
            key: _one(options, schema.value, f"{where}[{key!r}]")
            for key, options in _group(value, lambda k: k, where).items()
        }
    if isinstance(schema, ListOf):
        if not isinstance(value, list) or isinstance(value, Obj):
            return value
        return [resolve(item, schema.item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Obj):
        out = {}
        for options in _group(value, fold, where).values():
            merged = _one(options, ANY, f"{where}.{options[0][0]}")
            out[options[-1][0]] = merged
        return out
    if isinstance(value, list):
        return [resolve(item, ANY, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _no_obj(value: Any, schema: Schema, where: str) -> Any:
    # Not an object where Go expects one: dockerd answers 400 itself; pass the plain value on.
    return plain(value) if isinstance(value, list) else value


def dumps(value: Any) -> bytes:
    """The resolved value as the body sent to the engine."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


__all__ = [
    "ANY",
    "AnyValue",
    "ListOf",
    "MapOf",
    "Obj",
    "Schema",
    "Struct",
    "dumps",
    "fold",
    "is_empty",
    "load",
    "plain",
    "resolve",
]
