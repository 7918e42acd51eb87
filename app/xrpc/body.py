"""Reading a procedure's JSON body by hand, so that it happens after authentication.

FastAPI parses declared body models before running dependencies; a procedure that must answer
401 before saying anything about the body reads it here, after its auth dependency.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request

from app.xrpc.errors import InvalidRequest, PayloadTooLarge


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads(..., parse_constant=...) would build a decoder per request.
_JSON = json.JSONDecoder(parse_constant=_no_constants)


# A \uD800-\uDFFF escape: JSON allows a lone one, but it is half a character that cannot be
# encoded as UTF-8, so hashing, storing or echoing it fails far from here (a 500, not a 400).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate_at(value: Any) -> str | None:
    """The path of the first key or string holding a lone surrogate, or None (iterative: the
    body may be nested as deeply as the JSON parser allows)."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or "the request body"
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return f"a key of {where}" if where else "a key of the request body"
                stack.append((child, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None


async def read_json_object(request: Request, *, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object: Content-Type application/json, at most `max_bytes`, UTF-8."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise InvalidRequest(f"Content-Type must be application/json, not {media_type or 'missing'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the request body is larger than {max_bytes // 1024} KiB")
    # Counted on the stream as well: a chunked body or a lying Content-Length gets no further.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the request body is larger than {max_bytes // 1024} KiB")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        value = _JSON.decode(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(body):
        where = _lone_surrogate_at(value)
        if where is not None:
            raise InvalidRequest(f"{where[:200]} is not valid Unicode: it holds an unpaired surrogate escape")
    return value
