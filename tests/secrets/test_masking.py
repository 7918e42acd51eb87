"""The masker: every form of a secret value is hidden in a log line, and nothing else is."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from app.engine import masking
from app.engine.masking import MASK, Masker

VALUE = "hunter2-Sup3r/s3cret+value"


def test_masks_the_value_wherever_it_appears_in_a_line() -> None:
    masker = Masker([VALUE])
    assert masker.mask(f"token={VALUE}; again {VALUE}.") == f"token={MASK}; again {MASK}."


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"abc", b"user:"])
def test_masks_the_base64_of_the_value_at_every_alignment(prefix: bytes) -> None:
    masker = Masker([VALUE])
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(prefix + VALUE.encode() + b"\n").decode()
        shown = masker.mask(encoded)
        assert MASK in shown
        # What is left of the encoded text is the bits that also carry the bytes around the value.
        assert len(shown.replace(MASK, "")) <= 12


def test_masks_each_line_of_a_multi_line_value() -> None:
    value = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34\n-----END KEY-----"
    masker = Masker([value])
    for line in value.split("\n"):
        assert masker.mask(f"  {line}  ") == f"  {MASK}  "
    assert masker.mask(json.dumps(value)) == f'"{MASK}"'


def test_masks_the_longest_form_first_so_no_part_of_a_value_shows() -> None:
    masker = Masker(["abcd", "abcdefgh"])
    assert masker.mask("xxabcdefghxx") == f"xx{MASK}xx"


def test_leaves_lines_without_a_value_alone() -> None:
    masker = Masker([VALUE])
    line = "nothing to see: hunter2 is not the whole value"
    assert masker.mask(line) == line
    assert Masker().mask(line) == line


def test_add_mask_command_registers_its_value_and_hides_the_command() -> None:
    masker = Masker()
    assert masker.take_command("::add-mask::generated-Token-123") == f"::add-mask::{MASK}"
    assert masker.mask("the token is generated-Token-123") == f"the token is {MASK}"
    assert masker.take_command("echo ::add-mask::x") is None


def test_add_mask_value_is_unescaped_as_github_escapes_command_data() -> None:
    masker = Masker()
    masker.take_command("::add-mask::first-line%0Asecond-line%25")
    assert masker.mask("first-line") == MASK
    assert masker.mask("second-line%") == MASK


def test_service_log_filter_masks_messages_and_exceptions_of_running_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    masker = Masker([VALUE])
    masking.register(masker)
    logger = logging.getLogger("tests.secrets.filter")
    handler_filter = masking.MaskingFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        logger.warning("a message quoting %s", VALUE)
        try:
            raise ValueError(f"bad input {VALUE}")
        except ValueError:
            logger.exception("failed")
    finally:
        masking.unregister(masker)
        caplog.handler.removeFilter(handler_filter)
    assert VALUE not in caplog.text
    assert f"a message quoting {MASK}" in caplog.text
    assert f"bad input {MASK}" in caplog.text
