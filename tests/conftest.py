"""Shared test settings: every test under tests/unit is marked `unit` (the fast tier), and
every test under tests/proxy `proxy`, so `-m "unit or proxy"` (.ci/test-all) cannot miss a
new file."""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = {
    Path(__file__).parent / "unit": pytest.mark.unit,
    Path(__file__).parent / "proxy": pytest.mark.proxy,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parents = Path(str(item.fspath)).parents
        for directory, mark in TIERS.items():
            if directory in parents:
                item.add_marker(mark)
