"""The output layer: aligned per-host lines, levels, JSON events."""

from __future__ import annotations

import io
import json

from shipyard.core.output import QUIET, VERBOSE, Output


def make(**kwargs: object) -> tuple[Output, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Output(out=out, err=err, **kwargs), out, err  # type: ignore[arg-type]


def test_host_prefixes_are_aligned_to_the_widest_host() -> None:
    output, out, _ = make()
    output.set_hosts(["web-1", "10.210.0.13"])
    output.info("Booted app abc123", host="web-1")
    output.info("Booted app abc123", host="10.210.0.13")
    assert out.getvalue().splitlines() == [
        "[web-1]       Booted app abc123",
        "[10.210.0.13] Booted app abc123",
    ]


def test_multi_line_messages_keep_the_prefix_on_every_line() -> None:
    output, out, _ = make()
    output.result("a\nb", host="h1")
    assert out.getvalue() == "[h1] a\n[h1] b\n"


def test_levels() -> None:
    quiet, out, err = make(verbosity=QUIET)
    quiet.info("hidden")
    quiet.detail("hidden")
    quiet.result("shown")
    quiet.error("always")
    assert (out.getvalue(), err.getvalue()) == ("shown\n", "always\n")
    verbose, out, _ = make(verbosity=VERBOSE)
    verbose.detail("docker ps", host="h1")
    assert out.getvalue() == "[h1] docker ps\n"


def test_json_mode_writes_one_object_per_event() -> None:
    output, out, err = make(json_mode=True)
    output.info("Booted", host="h1", version="v1")
    output.detail("debug line")
    output.data("config", {"a": 1}, "a: 1")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r.get("level", r.get("event")) for r in records] == ["info", "debug", "config"]
    assert (
        records[0]["host"] == "h1"
        and records[0]["version"] == "v1"
        and records[0]["time"].endswith("Z")
    )
    assert err.getvalue() == ""


def test_progress_is_silent_when_not_a_terminal() -> None:
    output, out, err = make()
    with output.progress("Pushing", total=3) as bar:
        bar.advance()
    assert out.getvalue() == err.getvalue() == ""
