"""A log file that never grows past its cap: the head and the tail of a stream are kept.

A task that prints 2 GB must not leave 2 GB under .guildrun, and the engine must not
hold them in memory either. The first half of the cap is written as it comes; after
that the file's second half is a ring the stream goes round (written in place, so
memory stays one read buffer). When the stream ends, the ring is put in order after a
line saying how much was cut from the middle.
"""

from __future__ import annotations

import os

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW


class CappedFile:
    def __init__(self, path: str | os.PathLike[str], limit: int) -> None:
        self.fd = os.open(path, _FLAGS, 0o644)
        self.limit = max(limit, 2)
        self.head = self.limit // 2
        self.ring = self.limit - self.head
        self.total = 0  # bytes the stream has given

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        if self.total < self.head:  # the head, in order
            take = min(len(view), self.head - self.total)
            self._pwrite(view[:take], self.total)
            self.total += take
            view = view[take:]
        while view:  # the tail: round the ring
            at = (self.total - self.head) % self.ring
            take = min(len(view), self.ring - at)
            self._pwrite(view[:take], self.head + at)
            self.total += take
            view = view[take:]

    def _pwrite(self, data: memoryview, offset: int) -> None:
        while data:
            n = os.pwrite(self.fd, data, offset)
            data, offset = data[n:], offset + n

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if self.total > self.limit:
                cut = self.total - self.limit
                at = (self.total - self.head) % self.ring  # the oldest byte of the ring
                ring = os.pread(self.fd, self.ring, self.head)
                note = (
                    f"\n[guildrun: {cut} bytes cut from the middle of this log "
                    f"(max_log_bytes = {self.limit}); the last {self.ring} follow]\n"
                ).encode()
                os.ftruncate(self.fd, self.head)
                self._pwrite(memoryview(note + ring[at:] + ring[:at]), self.head)
        finally:
            os.close(self.fd)
            self.fd = -1
