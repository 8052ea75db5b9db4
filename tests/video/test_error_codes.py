"""The signalling socket's codes are SignallingCode members (video/errors.py), all of them in video/PROTOCOL.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tenancy.errors import SocketErrorCode
from video.errors import SignallingCode, VideoCode
from video.services import Refused

PROTOCOL = Path(__file__).resolve().parents[2] / "video" / "PROTOCOL.md"


def test_protocol_md_lists_exactly_the_socket_codes():
    row = next(line for line in PROTOCOL.read_text().splitlines() if line.startswith("| `error` |"))
    listed = set(re.findall(r"`([a-z][a-z0-9_]*)`", row)) - {"error", "code", "message"}
    assert listed == {code.value for code in SignallingCode}


def test_socket_codes_have_no_http_status_and_http_codes_one():
    assert all(isinstance(code, SocketErrorCode) and code.status is None for code in SignallingCode)
    assert all(not isinstance(code, SocketErrorCode) and code.status for code in VideoCode)


def test_a_refusal_takes_a_signalling_code_only():
    assert Refused(SignallingCode.INVALID_MESSAGE, "Dropped.").code == "invalid_message"
    for code in ("invalid_message", VideoCode.NOT_ADMITTED):
        with pytest.raises(TypeError):
            Refused(code, "Dropped.")  # type: ignore[arg-type]
