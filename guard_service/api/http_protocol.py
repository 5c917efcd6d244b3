"""uvicorn's HTTP protocol with a deadline for a request's head.

uvicorn arms its idle timeout only after a response: a connection that never sends a request, or sends its head
a byte at a time (slowloris), is held open for ever, and enough of them exhaust the process's file descriptors.
Here a request's head (request line and headers) must arrive within `head_timeout_s` of the connection opening
or of the request's first byte; a body and a response may take as long as they need.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadTimeoutProtocol(HttpToolsProtocol):
    head_timeout_s: float = 15.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()


def with_head_timeout(seconds: float) -> type[HeadTimeoutProtocol]:
    """The protocol class to give uvicorn (`uvicorn.Config(http=...)`)."""
    return type("HeadTimeout", (HeadTimeoutProtocol,), {"head_timeout_s": seconds})
