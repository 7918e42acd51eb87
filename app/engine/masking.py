"""Masking secret values out of a run's log, as GitHub's runner and Tangled's 2026 spindle do.

    masker = Masker()
    masker.add(value)              # a repo secret, or a value a step registered with ::add-mask::
    masker.mask(text)              # every registered form of every value replaced by MASK

What a value is masked as: the value itself, each line of a multi-line value, its JSON-escaped and
URL-encoded forms, and its base64 in the standard and URL-safe alphabets, with and without padding,
at the three alignments it can take inside a longer base64 text (`echo "x$SECRET" | base64` still
contains the middle of the value's base64). Longer forms are replaced first, so that a form that
contains another is hidden whole.

Masking is per line: a value split across two lines of output is masked line by line (a multi-line
value) or not at all (a step that prints half of it on each line), as on GitHub.

`MaskingFilter` keeps values out of the service's own log: it masks every log record against the
values of the runs this process is running.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import weakref
from urllib.parse import quote

MASK = "***"
# A derived form (a base64 fragment, a line of a multi-line value) shorter than this is not
# masked on its own: masking every `ab` in a log hides nothing and ruins the log. The value
# itself is always masked, whatever its length.
MIN_DERIVED_LENGTH = 4
ADD_MASK = "::add-mask::"


def _base64_forms(value: bytes) -> set[str]:
    """The base64 of `value` wherever it sits in a longer text: each of the three alignments,
    trimmed of the characters that also depend on the bytes before and after it."""
    forms: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + value).decode("ascii")
        # Characters that mix in the padding bytes before the value: offset 1 → 2 chars, 2 → 3.
        start = (0, 2, 3)[offset]
        total = offset + len(value)
        # The last full group of 3 bytes ends where the characters stop depending on what follows.
        end = (total // 3) * 4
        middle = encoded[start:end]
        if offset == 0:
            forms.add(encoded)
            forms.add(encoded.rstrip("="))
        if middle:
            forms.add(middle)
    forms |= {form.replace("+", "-").replace("/", "_") for form in forms}
    return forms


def derived_forms(value: str) -> set[str]:
    """Every text `value` is masked as (see the module docstring)."""
    if not value:
        return set()
    forms = {value}
    lines = [line.strip("\r") for line in value.split("\n")]
    if len(lines) > 1:
        forms |= {line for line in lines if line.strip()}
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    forms.add(quote(value, safe=""))
    forms |= _base64_forms(value.encode("utf-8", errors="surrogateescape"))
    return {form for form in forms if form == value or len(form) >= MIN_DERIVED_LENGTH}


def unescape_command_value(text: str) -> str:
    """A workflow command's data as GitHub escapes it: %25 → %, %0D → CR, %0A → LF."""
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


class Masker:
    """The values one run's log must never show. Thread-safe: values are added from the event
    loop, and the service's log filter may read from any thread."""

    def __init__(self, values: list[str] | tuple[str, ...] = ()) -> None:
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        for value in values:
            self.add(value)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def add(self, value: str) -> None:
        """Mask `value` (and its derived forms) in every line from now on."""
        forms = derived_forms(value)
        with self._lock:
            if forms <= self._forms:
                return
            self._forms |= forms
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(form) for form in ordered))

    def mask(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def take_command(self, line: str) -> str | None:
        """For a line of step output that is an `::add-mask::` command: register its value and
        return what the log shows instead; None for any other line."""
        stripped = line.lstrip()
        if not stripped.startswith(ADD_MASK):
            return None
        value = unescape_command_value(stripped[len(ADD_MASK) :].rstrip("\r"))
        if value.strip():
            self.add(value)
        return ADD_MASK + MASK


# Maskers of the runs in progress in this process: the service log filter masks against them all.
_running: weakref.WeakSet[Masker] = weakref.WeakSet()
_running_lock = threading.Lock()


def register(masker: Masker) -> None:
    with _running_lock:
        _running.add(masker)


def unregister(masker: Masker) -> None:
    with _running_lock:
        _running.discard(masker)


def mask_everywhere(text: str) -> str:
    """`text` masked against every run in progress in this process."""
    with _running_lock:
        maskers = list(_running)
    for masker in maskers:
        text = masker.mask(text)
    return text


class MaskingFilter(logging.Filter):
    """Masks each record (message, arguments and exception text) against the runs in progress:
    an exception that quotes a secret value never reaches the service's log in clear."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _running_lock:
            if not _running:
                return True
        message = record.getMessage()
        masked = mask_everywhere(message)
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = mask_everywhere(formatted)
            record.exc_info = None
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install_log_filter(logger: logging.Logger | None = None) -> MaskingFilter:
    """Add the masking filter to every handler of `logger` (the root logger by default), once."""
    target = logger or logging.getLogger()
    existing = next((f for h in target.handlers for f in h.filters if isinstance(f, MaskingFilter)), None)
    found = existing or MaskingFilter()
    for handler in target.handlers:
        if found not in handler.filters:
            handler.addFilter(found)
    return found
