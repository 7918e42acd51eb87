"""The service's OpenAPI document, made to say what the service really answers.

FastAPI's generated document knows nothing of XRPC: procedures that read their body by hand
(after authentication) show no request body, every error is a `{"error","message"}` body that
it does not describe, and it promises 422 validation errors that never happen (they are
answered 400 `InvalidRequest`). This fills those in from the lexicons:

- each `/xrpc/<nsid>` procedure with a lexicon (a FastAPI route, or a plain Starlette one such
  as the trigger, which FastAPI leaves out) gets its input as the JSON request body, its
  output as the 200 body, and the service-auth bearer token as its security requirement;
- each `/xrpc/<nsid>` query with a lexicon (routes that read their query string by hand) gets
  its parameters and its output as the 200 body;
- every operation gets a `default` response: the XRPC error body (or, for an HTML page, a page);
- the 422 responses and their schemas are removed.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.routing import Route

from app.xrpc.lexicon import lexicons

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "An atproto service-auth JWT for this service (aud) and this method (lxm).",
}


def lexicon_schema(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A lexicon type as JSON Schema (refs within the document inlined)."""
    kind = schema.get("type")
    if kind == "object":
        out: dict[str, Any] = {
            "type": "object",
            "properties": {name: lexicon_schema(p, defs) for name, p in schema.get("properties", {}).items()},
        }
        if schema.get("required"):
            out["required"] = list(schema["required"])
        return out
    if kind == "string":
        out = {"type": "string"}
        if "enum" in schema:
            out["enum"] = list(schema["enum"])
        if schema.get("format") == "uri":
            out["format"] = "uri"
        return out
    if kind == "integer":
        return {"type": "integer"}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "array":
        return {"type": "array", "items": lexicon_schema(schema["items"], defs)}
    if kind == "ref" and schema["ref"].startswith("#"):
        return lexicon_schema(defs[schema["ref"][1:]], defs)
    if kind == "unknown":
        return {"type": "object"}
    return {}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _procedure_defs(documents: dict[str, Any], path: str, kind: str = "procedure") -> dict[str, Any] | None:
    """The defs of the lexicon of `/xrpc/<nsid>` when that method is a `kind`, else None."""
    if not path.startswith("/xrpc/"):
        return None
    defs: dict[str, Any] = documents.get(path.removeprefix("/xrpc/"), {}).get("defs", {})
    return defs if defs.get("main", {}).get("type") == kind else None


def _query_parameters(params: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    """A lexicon's `params` as OpenAPI query parameters (arrays as repeated keys)."""
    required = set(params.get("required", ()))
    out = []
    for name, prop in params.get("properties", {}).items():
        schema = lexicon_schema(prop, defs)
        if prop.get("type") == "integer":
            schema.update({k: prop[k] for k in ("minimum", "maximum") if k in prop})
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": schema,
        }
        if prop.get("type") == "array":
            parameter.update(style="form", explode=True)
        out.append(parameter)
    return out


def xrpc_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for `app`, corrected as the module docstring says."""
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["XrpcError"] = ERROR_SCHEMA
    components.setdefault("securitySchemes", {})["serviceAuth"] = SECURITY_SCHEME
    error: dict[str, Any] = {
        "description": "An XRPC error",
        "content": _json({"$ref": "#/components/schemas/XrpcError"}),
    }
    documents = lexicons().documents
    paths = document.setdefault("paths", {})
    for route in app.routes:
        # Plain routes are not in FastAPI's document; a procedure's operation comes from its lexicon.
        if isinstance(route, Route) and not isinstance(route, APIRoute) and "POST" in (route.methods or ()):
            defs = _procedure_defs(documents, route.path)
            if defs is not None:
                main = defs["main"]
                operation = {"summary": route.name.replace("_", " ").capitalize(), "operationId": route.name}
                if main.get("description"):
                    operation["description"] = main["description"]
                paths.setdefault(route.path, {})["post"] = operation
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["default"] = error
            page = responses.get("200", {}).get("content", {}).get("text/html")
            if page is not None:
                # A page for people answers its errors as a page too (a "not found" page).
                responses["default"] = {**error, "content": {**error["content"], "text/html": page}}
            query = _procedure_defs(documents, path, "query")
            if method == "get" and query is not None:
                main = query["main"]
                operation["parameters"] = _query_parameters(main.get("parameters", {}), query)
                output = main.get("output", {}).get("schema", {"type": "object"})
                responses["200"] = {"description": "Success", "content": _json(lexicon_schema(output, query))}
            defs = _procedure_defs(documents, path)
            if method != "post" or defs is None:
                continue
            main = defs["main"]
            body = main.get("input", {}).get("schema")
            if body is not None:
                operation["requestBody"] = {"required": True, "content": _json(lexicon_schema(body, defs))}
            output = main.get("output", {}).get("schema", {"type": "object"})
            responses["200"] = {"description": "Success", "content": _json(lexicon_schema(output, defs))}
            responses["401"] = {**error, "description": "Missing or invalid service-auth token"}
            operation["security"] = [{"serviceAuth": []}]
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = xrpc_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
