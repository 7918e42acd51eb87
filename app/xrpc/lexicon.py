"""Lexicon documents (lexicons/*.json) compiled once into fast validators of XRPC bodies.

Covers the lexicon types our procedures use: object, string (with its length limits, `enum`,
`const` and the `did`/`uri`/`nsid`/`datetime`… formats), integer, boolean, array, ref (local
`#def` and `nsid#def`), union, unknown. A failure raises InvalidRequest naming the field, e.g.
`actor must be a DID`.

Queries and subscriptions take `params` in the query string: `params_parser(nsid)` reads them
(integers and booleans from their text, arrays from repeated keys, unknown keys ignored) into a
checked dict. `output_validator` and `message_validator` check what we answer (the tests do).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from app.config import DID_RE
from app.xrpc.errors import InvalidRequest

Check = Callable[[Any, str], None]

LEXICON_DIR = Path(__file__).resolve().parents[2] / "lexicons"

_NSID_RE = re.compile(r"^[a-zA-Z](?:[a-zA-Z0-9-]{0,62})(?:\.[a-zA-Z0-9-]{1,63})+\Z")
_URI_RE = re.compile(r"^[a-z][a-z0-9+.-]*:\S+\Z", re.IGNORECASE)
_HANDLE_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\Z"
)
_TID_RE = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}\Z")
_RKEY_RE = re.compile(r"^[A-Za-z0-9.\-_:~]{1,512}\Z")


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value


FORMATS: dict[str, tuple[Callable[[str], bool], str]] = {
    "did": (lambda v: len(v) <= 2048 and DID_RE.match(v) is not None, "a DID"),
    "nsid": (lambda v: len(v) <= 317 and _NSID_RE.match(v) is not None, "an NSID"),
    "uri": (lambda v: len(v) <= 8192 and _URI_RE.match(v) is not None, "a URI"),
    "at-uri": (lambda v: v.startswith("at://") and len(v) <= 8192, "an at:// URI"),
    "handle": (lambda v: len(v) <= 253 and _HANDLE_RE.match(v) is not None, "a handle"),
    "at-identifier": (
        lambda v: FORMATS["did"][0](v) or FORMATS["handle"][0](v),
        "a DID or a handle",
    ),
    "datetime": (_is_datetime, "an RFC 3339 datetime"),
    "tid": (lambda v: _TID_RE.match(v) is not None, "a TID"),
    "record-key": (lambda v: v not in (".", "..") and _RKEY_RE.match(v) is not None, "a record key"),
    "cid": (lambda v: 8 <= len(v) <= 256 and v.isalnum(), "a CID"),
    "language": (lambda v: 0 < len(v) <= 128, "a language tag"),
}


class Lexicons:
    """Every lexicon document of a directory; validators are compiled on first use and kept."""

    def __init__(self, documents: Mapping[str, dict[str, Any]]) -> None:
        self.documents = dict(documents)
        self._compiled: dict[str, Check] = {}

    @classmethod
    def load(cls, directory: Path = LEXICON_DIR) -> Lexicons:
        documents = {}
        for path in sorted(directory.glob("*.json")):
            doc = json.loads(path.read_text(encoding="utf-8"))
            documents[doc["id"]] = doc
        if not documents:
            raise RuntimeError(f"no lexicon documents in {directory}")
        return cls(documents)

    def input_validator(self, nsid: str) -> Callable[[Any], None]:
        """A function that raises InvalidRequest unless its argument is a valid input of `nsid`."""
        check = self._body_check(nsid, "input")
        return lambda value: check(value, "")

    def output_validator(self, nsid: str) -> Callable[[Any], None]:
        check = self._body_check(nsid, "output")
        return lambda value: check(value, "")

    def message_validator(self, nsid: str) -> Callable[[Any], None]:
        """For a subscription: raises InvalidRequest unless its argument is a valid message
        (a union member carries `$type`, e.g. `sh.tangled.ci.subscribePipelineLogs#data`)."""
        schema = self.documents[nsid]["defs"]["main"]["message"]["schema"]
        check = self._compile(schema, nsid)
        return lambda value: check(value, "message")

    def params_parser(self, nsid: str) -> Callable[[Iterable[tuple[str, str]]], dict[str, Any]]:
        """A function from query-string pairs to the method's checked parameters; InvalidRequest
        names the parameter otherwise."""
        params = self.documents[nsid]["defs"]["main"].get("parameters", {"properties": {}})
        properties: dict[str, dict[str, Any]] = params.get("properties", {})
        checks = {name: self._compile(prop, nsid) for name, prop in properties.items()}
        required = tuple(params.get("required", ()))

        def parse(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
            values: dict[str, Any] = {}
            for name, text in pairs:
                prop = properties.get(name)
                if prop is None:
                    continue  # as XRPC servers do: a newer client's parameter is not an error
                if prop.get("type") == "array":
                    values.setdefault(name, []).append(_scalar(prop["items"], name, text))
                elif name in values:
                    raise InvalidRequest(f"{name} must be given once")
                else:
                    values[name] = _scalar(prop, name, text)
            for name in required:
                if name not in values:
                    raise InvalidRequest(f"{name} is required")
            for name, value in values.items():
                checks[name](value, name)
            return values

        return parse

    def _body_check(self, nsid: str, part: str) -> Check:
        main = self.documents[nsid]["defs"]["main"]
        schema = main[part]["schema"]
        return self._compile(schema, nsid)

    def _resolve(self, ref: str, nsid: str) -> Check:
        doc_id, _, name = ref.partition("#")
        doc_id = doc_id or nsid
        key = f"{doc_id}#{name or 'main'}"
        if key not in self._compiled:
            # Placeholder first, so recursive definitions terminate.
            self._compiled[key] = lambda value, where: self._compiled[key](value, where)
            definition = self.documents[doc_id]["defs"][name or "main"]
            self._compiled[key] = self._compile(definition, doc_id)
        return self._compiled[key]

    def _compile(self, schema: dict[str, Any], nsid: str) -> Check:
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema, nsid)
        if kind == "string":
            return _string(schema)
        if kind == "integer":
            return _integer(schema)
        if kind == "boolean":
            return _typed(bool, "a boolean")
        if kind == "array":
            return self._array(schema, nsid)
        if kind == "ref":
            target = schema["ref"]
            return lambda value, where: self._resolve(target, nsid)(value, where)
        if kind == "union":
            return self._union(schema, nsid)
        if kind == "unknown":
            return _typed(dict, "an object")
        if kind in ("bytes", "cid-link", "blob"):
            return lambda value, where: None
        raise ValueError(f"lexicon {nsid}: unsupported type {kind!r}")

    def _object(self, schema: dict[str, Any], nsid: str) -> Check:
        required = tuple(schema.get("required", ()))
        nullable = frozenset(schema.get("nullable", ()))
        properties = {name: self._compile(prop, nsid) for name, prop in schema.get("properties", {}).items()}

        def check(value: Any, where: str) -> None:
            if not isinstance(value, dict):
                raise InvalidRequest(f"{where or 'the request body'} must be a JSON object")
            prefix = f"{where}." if where else ""
            for name in required:
                if name not in value:
                    raise InvalidRequest(f"{prefix}{name} is required")
            for name, prop_check in properties.items():
                if name in value:
                    item = value[name]
                    if item is None and name in nullable:
                        continue
                    prop_check(item, prefix + name)

        return check

    def _array(self, schema: dict[str, Any], nsid: str) -> Check:
        items = self._compile(schema["items"], nsid)
        min_length, max_length = schema.get("minLength"), schema.get("maxLength")

        def check(value: Any, where: str) -> None:
            if not isinstance(value, list):
                raise InvalidRequest(f"{where} must be an array")
            if min_length is not None and len(value) < min_length:
                raise InvalidRequest(f"{where} must have at least {min_length} items")
            if max_length is not None and len(value) > max_length:
                raise InvalidRequest(f"{where} must have at most {max_length} items")
            for index, item in enumerate(value):
                items(item, f"{where}[{index}]")

        return check

    def _union(self, schema: dict[str, Any], nsid: str) -> Check:
        refs = {(r if "#" in r and not r.startswith("#") else f"{nsid}{r}"): r for r in schema["refs"]}
        closed = schema.get("closed", False)

        def check(value: Any, where: str) -> None:
            if not isinstance(value, dict) or not isinstance(value.get("$type"), str):
                raise InvalidRequest(f"{where} must be an object with a $type")
            kind = value["$type"] if "#" in value["$type"] else value["$type"] + "#main"
            if kind in refs:
                self._resolve(refs[kind], nsid)(value, where)
            elif closed:
                raise InvalidRequest(f"{where}.$type must be one of {sorted(refs)}")

        return check


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


def _scalar(schema: dict[str, Any], name: str, text: str) -> Any:
    """A query-string value as the type its parameter declares."""
    kind = schema.get("type")
    if kind == "integer":
        # ASCII digits only, bounded: int() also takes "٣" and "1_000", and 5000 digits cost time.
        digits = text[1:] if text.startswith("-") else text
        if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
            raise InvalidRequest(f"{name} must be an integer, not {_shown(text)}")
        return int(text)
    if kind == "boolean":
        if text not in ("true", "false"):
            raise InvalidRequest(f"{name} must be true or false, not {_shown(text)}")
        return text == "true"
    return text


def _typed(kind: type, described: str) -> Check:
    def check(value: Any, where: str) -> None:
        # bool is an int in Python; a JSON true is never an integer and vice versa.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise InvalidRequest(f"{where} must be {described}")

    return check


def _string(schema: dict[str, Any]) -> Check:
    fmt = FORMATS.get(schema.get("format", ""))
    max_length, min_length = schema.get("maxLength"), schema.get("minLength")
    enum = schema.get("enum")
    const = schema.get("const")

    def check(value: Any, where: str) -> None:
        if not isinstance(value, str):
            raise InvalidRequest(f"{where} must be a string")
        # Lexicon lengths count UTF-8 bytes.
        if max_length is not None and len(value.encode()) > max_length:
            raise InvalidRequest(f"{where} must be at most {max_length} bytes long")
        if min_length is not None and len(value.encode()) < min_length:
            raise InvalidRequest(f"{where} must be at least {min_length} bytes long")
        if enum is not None and value not in enum:
            raise InvalidRequest(f"{where} must be one of {enum}")
        if const is not None and value != const:
            raise InvalidRequest(f"{where} must be {const!r}")
        if fmt is not None and not fmt[0](value):
            raise InvalidRequest(f"{where} must be {fmt[1]}")

    return check


def _integer(schema: dict[str, Any]) -> Check:
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    base = _typed(int, "an integer")

    def check(value: Any, where: str) -> None:
        base(value, where)
        if minimum is not None and value < minimum:
            raise InvalidRequest(f"{where} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise InvalidRequest(f"{where} must be at most {maximum}")

    return check


@cache
def lexicons() -> Lexicons:
    """The project's lexicons, read from disk once per process."""
    return Lexicons.load()
