"""A body buffer that keeps the first N bytes in memory and spills the rest to a temp file.

Used for ``--buffer-requests``/``--buffer-responses``.  The size limit counts memory and
disk together; a body exactly at the limit is allowed and 0 means unlimited.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO

READ_CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    pass


class SpillBuffer:
    __slots__ = ("_file", "_memory", "_memory_limit", "max_size", "size")

    def __init__(self, memory_limit: int, max_size: int) -> None:
        self._memory_limit = max(0, memory_limit)
        self.max_size = max_size
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append data; raise BodyTooLarge once the total passes ``max_size``."""
        self.size += len(data)
        if self.max_size and self.size > self.max_size:
            raise BodyTooLarge()
        room = self._memory_limit - len(self._memory)
        if self._file is None and len(data) <= room:
            self._memory += data
            return
        if self._file is None:
            self._memory += data[:room]
            data = data[room:]
            # Closed explicitly in close(); it outlives this call by design.
            self._file = tempfile.TemporaryFile(prefix="proxy-buffer-")  # noqa: SIM115
        self._file.write(data)

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def chunks(self) -> Iterator[bytes]:
        if self._memory:
            yield bytes(self._memory)
        if self._file is not None:
            self._file.seek(0)
            while True:
                block = self._file.read(READ_CHUNK)
                if not block:
                    break
                yield block

    def close(self) -> None:
        self._memory = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None
