"""Import paramiko without paying for invoke.

paramiko imports ``invoke`` when it starts, only to support ``Match exec`` in ssh_config
files, and invoke takes longer to import than anything else a deploy needs. A stand-in
module takes its place in ``sys.modules`` and imports the real invoke on first use, so
``Match exec`` keeps working and every other run skips the cost. (The stdlib's
``LazyLoader`` cannot do this on Python 3.11: ``import`` itself touches ``__spec__``,
which loads the module.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


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


_defer("invoke")

import paramiko  # noqa: E402 - after invoke is deferred

__all__ = ["paramiko"]
