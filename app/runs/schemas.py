"""The trigger procedure's input and output, checked against the lexicon and the rules of docs/trigger.md."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, TypedDict

from pydantic import BaseModel

from app.config import is_valid_host
from app.repos.service import is_valid_repo_name
from app.workflows.inputs import INPUT_NAME_RE, MAX_INPUT_NAME
from app.xrpc.errors import InvalidRequest
from app.xrpc.lexicon import lexicons

TRIGGER_NSID = "com.publicdomainrelay.temp.tangled.spindle.trigger"

MAX_BODY_BYTES = 64 * 1024
MAX_INPUTS = 25
MAX_INPUTS_BYTES = 16 * 1024

COMMIT_RE = re.compile(r"^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})\Z")
RKEY_RE = re.compile(r"^[A-Za-z0-9.\-_:~]{1,512}\Z")


# The digest's canonical JSON (built once: json.dumps with options builds an encoder per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class TriggerInput:
    """A checked trigger request; `ref` is lower-cased, `inputs` is never None (a dataclass, not a
    model: it is built from values already checked, once per trigger on the hot path)."""

    knot: str
    pipeline_rkey: str
    actor: str
    repo_did: str
    repo_name: str
    ref: str
    inputs: dict[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        """sha256 of the canonical request: a retry has the same digest, a changed request not."""
        canonical = _CANONICAL.encode(
            [self.knot, self.pipeline_rkey, self.actor, self.repo_did, self.repo_name, self.ref, self.inputs]
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


class WorkflowResult(BaseModel):
    workflow: str
    logsUrl: str  # noqa: N815  (the lexicon's field names)
    statusUrl: str  # noqa: N815


class WorkflowUrls(TypedDict):
    workflow: str
    logsUrl: str  # noqa: N815
    statusUrl: str  # noqa: N815


class TriggerOutput(TypedDict):
    """The lexicon's output; a plain dict (no model to build per request)."""

    submitted: bool
    knot: str
    pipelineRkey: str  # noqa: N815
    ref: str
    workflows: list[WorkflowUrls]


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


def _check_inputs(inputs: Any) -> dict[str, str]:
    if not isinstance(inputs, dict):
        raise InvalidRequest("inputs must be an object of string keys to string values")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"inputs has {len(inputs)} keys: at most {MAX_INPUTS} are allowed")
    total = 0
    for key, value in inputs.items():
        if len(key) > MAX_INPUT_NAME:
            raise InvalidRequest(f"inputs key {_shown(key)} is longer than {MAX_INPUT_NAME} characters")
        if not INPUT_NAME_RE.fullmatch(key):
            raise InvalidRequest(f"inputs key {_shown(key)} must match {INPUT_NAME_RE.pattern}")
        if not isinstance(value, str):
            raise InvalidRequest(f"inputs.{key} must be a string")
        total += len(key) + len(value.encode("utf-8", errors="surrogatepass"))
    if total > MAX_INPUTS_BYTES:
        raise InvalidRequest(f"inputs are larger than {MAX_INPUTS_BYTES // 1024} KiB in total")
    return inputs


_validate_lexicon = lexicons().input_validator(TRIGGER_NSID)


def parse_trigger_input(body: Any) -> TriggerInput:
    """Check a decoded JSON body against the lexicon and docs/trigger.md; 400 naming the field otherwise."""
    _validate_lexicon(body)
    knot, ref = body["knot"], body["ref"]
    rkey, repo_name = body["pipelineRkey"], body["repoName"]
    if not is_valid_host(knot):
        raise InvalidRequest(
            f"knot must be a host name or IP address with an optional :port (no scheme, path, user "
            f"or spaces), not {_shown(knot)}"
        )
    if not COMMIT_RE.match(ref):
        raise InvalidRequest(f"ref must be a full commit id (40 or 64 hex digits), not {_shown(ref)}")
    if not is_valid_repo_name(repo_name):
        raise InvalidRequest(
            f"repoName must be 1-100 characters of A-Za-z0-9 . _ - (not . or ..), not {_shown(repo_name)}"
        )
    if rkey in (".", "..") or not RKEY_RE.match(rkey):
        raise InvalidRequest(
            f"pipelineRkey must be a record key: 1-512 characters of A-Za-z0-9 . - _ : ~ "
            f"(not . or ..), not {_shown(rkey)}"
        )
    inputs = _check_inputs(body["inputs"]) if "inputs" in body else {}
    return TriggerInput(
        knot=knot,
        pipeline_rkey=rkey,
        actor=body["actor"],
        repo_did=body["repoDid"],
        repo_name=repo_name,
        ref=ref.lower(),
        inputs=dict(inputs),
    )
