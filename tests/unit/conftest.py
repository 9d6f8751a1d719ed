"""Unit tests never see the developer's machine: a fresh HOME and no installed plugins,
unless a test asks for them."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SHIPYARD_DISABLE_PLUGIN_AUTOLOAD", "1")
    for variable in ("VERSION", "SHIPYARD_DISABLE_PLUGINS", "SHIPYARD_LOCK"):
        monkeypatch.delenv(variable, raising=False)
