"""Import paramiko without paying for invoke or importlib.metadata.

paramiko imports ``invoke`` when it starts, only to support ``Match exec`` in ssh_config
files, and invoke takes longer to import than anything else a deploy needs. A stand-in
module takes its place in ``sys.modules`` and imports the real invoke on first use, so
``Match exec`` keeps working and every other run skips the cost. (The stdlib's
``LazyLoader`` cannot do this on Python 3.11: ``import`` itself touches ``__spec__``,
which loads the module.)

paramiko also imports ``importlib.metadata`` (about 30 ms: email, zipfile, csv...) only
to read its own version. While paramiko is imported, a stand-in answers ``version()``
from the ``<name>-<version>.dist-info`` directory name; anything else it is asked for
comes from the real module. Once paramiko is in, the stand-in leaves ``sys.modules``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from shipyard.core.entrypoints import distribution_version


class _OnFirstUse(types.ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        # Only called for attributes the stand-in lacks: swap in the real module.
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        return getattr(real, attribute)


def _defer(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return  # not installed: paramiko handles the ImportError itself
    stand_in = _OnFirstUse(name)
    stand_in.__spec__ = spec
    sys.modules[name] = stand_in


class _VersionsFromDistInfo(_OnFirstUse):
    def version(self, distribution_name: str) -> str:
        found = distribution_version(distribution_name)
        return found if found is not None else str(self.__getattr__("version")(distribution_name))


def _stand_in_for_metadata() -> _VersionsFromDistInfo | None:
    if "importlib.metadata" in sys.modules:
        return None
    stand_in = _VersionsFromDistInfo("importlib.metadata")
    stand_in.__spec__ = importlib.util.find_spec("importlib.metadata")
    sys.modules["importlib.metadata"] = stand_in
    return stand_in


_defer("invoke")
_metadata_stand_in = _stand_in_for_metadata()
try:
    import paramiko
finally:
    if _metadata_stand_in is not None and sys.modules.get("importlib.metadata") is _metadata_stand_in:
        del sys.modules["importlib.metadata"]

__all__ = ["paramiko"]
