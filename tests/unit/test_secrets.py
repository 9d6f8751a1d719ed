"""Secrets files: dotenv syntax, $(cmd), ${VAR}, destinations, missing keys, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.core.errors import SecretNotFound, ShipyardError
from shipyard.core.output import Output
from shipyard.core.secrets import Secrets, parse_dotenv, secrets_files


def test_dotenv_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_ENV", "env-value")
    parsed = parse_dotenv(
        """
        # a comment
        PLAIN=value # trailing comment
        export EXPORTED=yes
        SINGLE='literal $FROM_ENV $(echo no)'
        DOUBLE="line1\\nline2 ${FROM_ENV}"
        BRACED=${PLAIN}-and-$FROM_ENV
        ESCAPED=\\$NOT_EXPANDED
        COMMAND=$(printf '%s' "$FROM_ENV" | tr a-z A-Z)
        NOT_RUN=\\$(echo nope)
        MULTI="-----BEGIN KEY-----
        abc
        -----END KEY-----"
        """.replace("\n        ", "\n")
    )
    assert parsed == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "SINGLE": "literal $FROM_ENV $(echo no)",
        "DOUBLE": "line1\nline2 env-value",
        "BRACED": "value-and-env-value",
        "ESCAPED": "$NOT_EXPANDED",
        "COMMAND": "ENV-VALUE",
        "NOT_RUN": "$(echo nope)",
        "MULTI": "-----BEGIN KEY-----\nabc\n-----END KEY-----",
    }


def test_a_failing_command_names_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ShipyardError, match=r"^secrets:2: command in \$\(\.\.\.\) exited with 3$"):
        parse_dotenv("A=1\nB=$(exit 3)\n")


def test_a_malformed_line_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ShipyardError, match=r"^secrets:1: expected KEY=value, got 'just words'$"):
        parse_dotenv("just words\n")


def test_files_are_read_in_order_and_destination_replaces_the_plain_file(tmp_path: Path) -> None:
    base = tmp_path / ".shipyard" / "secrets"
    base.parent.mkdir()
    (tmp_path / ".shipyard/secrets-common").write_text("A=common\nB=common\n")
    base.write_text("B=plain\n")
    (tmp_path / ".shipyard/secrets.prod").write_text("B=prod\nC=${A}-prod\n")
    assert Secrets(secrets_files(base, None)).all() == {"A": "common", "B": "plain"}
    assert Secrets(secrets_files(base, "prod")).all() == {
        "A": "common",
        "B": "prod",
        "C": "common-prod",
    }


def test_a_missing_secret_names_the_key_and_the_files(tmp_path: Path) -> None:
    base = tmp_path / "secrets"
    base.write_text("A=1\n")
    with pytest.raises(SecretNotFound) as missing:
        Secrets(secrets_files(base, None))["NOPE"]
    assert str(missing.value) == f"Secret 'NOPE' not found in {base}"


def test_loading_is_lazy(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    base = tmp_path / "secrets"
    base.write_text(f"A=$(touch {marker})\n")
    secrets = Secrets(secrets_files(base, None))
    assert not marker.exists()
    secrets.all()
    assert marker.exists()


def test_loaded_values_are_redacted_from_all_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "secrets"
    base.write_text('TOKEN=s3cr3t-token\nKEY="-----BEGIN-----\nline-two-of-key\n-----END-----"\n')
    output = Output()
    Secrets(secrets_files(base, None), on_load=output.redact).all()
    output.info("using s3cr3t-token now", host="h1")
    output.error("key line-two-of-key leaked?")
    captured = capsys.readouterr()
    assert captured.out == "[h1] using [REDACTED] now\n"
    assert captured.err == "key [REDACTED] leaked?\n"


def test_json_output_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    output = Output(json_mode=True)
    output.redact(["topsecret"])
    output.info("x topsecret y", host="h1", extra="topsecret")
    line = capsys.readouterr().out
    assert "topsecret" not in line and line.count("[REDACTED]") == 2
