"""Fixtures for tests against the multi-host lab (tests/lab/README.md).

Every test in this directory is marked `integration`. The session-scoped `lab`
fixture brings up hosts h1..hN (N = $SHIPYARD_LAB_HOSTS, default 3) and tears them
down at the end; with SHIPYARD_LAB_EXTERNAL=1 it reuses a lab that is already up
(`make lab-up N=3`) and leaves it running. If the lab cannot come up the tests fail,
they never skip: CI must really run them.

    def test_something(lab: Lab) -> None:
        h1 = lab.host("h1")
        h1.ssh(["docker", "ps"])          # system ssh with lab.ssh_config
        h1.run("docker info")             # nsenter, no SSH involved
        with lab.ssh_blocked("h2"): ...   # deployer cannot reach h2:22 directly
        with h1.sshd_stopped(): ...       # h1 refuses SSH connections

`Lab`, `Host` and `LabError` come from tests/lab/lab.py, which this file loads as
the module `shipyard_lab` (`from shipyard_lab import Host` works in tests here).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

INTEGRATION_DIR = Path(__file__).resolve().parent
LAB_PY = INTEGRATION_DIR.parent / "lab" / "lab.py"


def _load_lab_module() -> ModuleType:
    # tests/lab is not a package and `lab` would clash with the fixture name.
    if "shipyard_lab" in sys.modules:
        return sys.modules["shipyard_lab"]
    spec = importlib.util.spec_from_file_location("shipyard_lab", LAB_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shipyard_lab"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


shipyard_lab = _load_lab_module()
Lab = shipyard_lab.Lab
Host = shipyard_lab.Host
LabError = shipyard_lab.LabError


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def lab_host_count() -> int:
    raw = os.environ.get("SHIPYARD_LAB_HOSTS", "3")
    try:
        count = int(raw)
    except ValueError:
        raise pytest.UsageError(f"SHIPYARD_LAB_HOSTS must be a number, got {raw!r}") from None
    if count < 1:
        raise pytest.UsageError(f"SHIPYARD_LAB_HOSTS must be at least 1, got {count}")
    return count


def lab_is_external() -> bool:
    return os.environ.get("SHIPYARD_LAB_EXTERNAL") == "1"


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The running lab; `lab.hosts` are h1..hN."""
    external = lab_is_external()
    # One lab per machine, and tests change it (stop sshds, block ports, restart
    # it): hold the machine-wide lab lock for the whole session, so a concurrent
    # session waits instead of breaking this one's hosts.
    lock = shipyard_lab.MachineLock()
    try:
        lock.acquire()
    except LabError as error:
        pytest.fail(f"the test lab is not available: {error}", pytrace=False)
    os.environ[shipyard_lab.LOCK_HELD_ENV] = "1"  # for lab.py run by this session
    instance: Lab | None = None
    try:
        try:
            instance = Lab()
            if external:
                instance.attach(min_hosts=lab_host_count())
            else:
                instance.up(lab_host_count())
        except LabError as error:
            # A failure, not a skip: a lab that cannot come up is a broken test setup.
            problem = "is not up" if external else "could not come up"
            pytest.fail(f"the test lab {problem}: {error}", pytrace=False)
        yield instance
    finally:
        try:
            if instance is not None and not external:
                instance.down()
        finally:
            os.environ.pop(shipyard_lab.LOCK_HELD_ENV, None)
            lock.release()


@pytest.fixture(scope="session")
def lab_hosts(lab: Lab) -> list[Host]:
    return list(lab.hosts)


@pytest.fixture(autouse=True)
def _lab_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the lab, lift SSH blocks and restart stopped sshds,
    so one failing test cannot leave the next one with an unreachable host."""
    instance = request.getfixturevalue("lab") if "lab" in request.fixturenames else None
    yield
    if instance is not None:
        instance.restore()


@pytest.fixture(scope="session")
def proxy_image(lab: Lab) -> str:
    """shipyard-proxy's image, built on the lab's Python base, in the lab registry."""
    from deploy_helpers import build_proxy_image

    return build_proxy_image()
