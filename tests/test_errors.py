"""first_line: the one line of a library's exception that a user-facing message quotes."""

from __future__ import annotations

from ip2p.errors import first_line


def test_first_line_takes_the_first_non_empty_line():
    assert first_line(ValueError("bad header\nTraceback details\nmore")) == "bad header"
    assert first_line(ValueError("\n  \n  indented reason  \nrest")) == "indented reason"
    assert first_line(OSError(2, "No such file")) == "[Errno 2] No such file"


def test_first_line_falls_back_to_the_type_and_cuts_to_the_limit():
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(RuntimeError("  \n ")) == "RuntimeError"
    assert first_line(ValueError("x" * 500)) == "x" * 300
    assert first_line(ValueError("y" * 500), 120) == "y" * 120
