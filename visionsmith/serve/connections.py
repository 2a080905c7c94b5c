"""Connection limits that uvicorn does not set by itself: slow or endless request heads, silent
connections, and bodies that keep trickling in after the answer.

uvicorn (0.54) closes a keep-alive connection left idle after an answer (``timeout_keep_alive``),
but it arms no timer before a connection's first request, none while a request's head is arriving
(a client may send one header line a minute for ever, or connect and send nothing), and none while
a body it no longer reads keeps coming after an early answer (a 413 or 503 sent before the body
was read).  With httptools (uvicorn's default parser when installed) a head's size has no limit
either.  ``guarded_protocol`` adds those to uvicorn's own protocol class, one timer per connection:

    head     from the connection's start, or from the first byte of the next request on a kept-alive
             connection, until the head is complete: ``header_timeout_s`` (then a 408 if any byte of
             a head came, and the connection is closed), at most ``max_head_bytes`` (then 431)
    busy     the app has the request: no timer here (the app's own body timeout answers 408)
    linger   answered before the body was read (413, 503, 404...): the connection is closed
             ``body_timeout_s`` after the answer unless another request starts on it (uvicorn reads
             and drops the rest of the body meanwhile; neither parser tells when that body ended)
    idle     answered, body read: uvicorn's keep-alive timer (``timeout_keep_alive``)

    uvicorn.run(app, **uvicorn_options(app))   # what `visionsmith serve` does

The connections dropped this way are counted in ``/metrics`` (``visionsmith_connections_closed``,
by reason), since no request ever reached the app.
"""
from __future__ import annotations

from http import HTTPStatus

from .metrics import Metrics


def guarded_protocol(header_timeout_s: float, body_timeout_s: float, max_head_bytes: int,
                     metrics: Metrics | None = None, base: type | None = None) -> type:
    """uvicorn's HTTP protocol class (``base``, default the one uvicorn picks: httptools if installed,
    else h11) with the deadlines above."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol
        base = AutoHTTPProtocol
    closed = metrics.connections_closed if metrics is not None else None

    class GuardedProtocol(base):
        # Connection state: `_vs_phase` (see the module docstring), its timer, and the bytes of the
        # head now arriving.
        _vs_phase = "head"
        _vs_timer = None
        _vs_head_bytes = 0

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._vs_enter("head")

        def connection_lost(self, exc) -> None:
            self._vs_cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            before, phase = getattr(self, "cycle", None), self._vs_phase
            super().data_received(data)
            if self.transport.is_closing():
                self._vs_cancel()
                return
            state = self._vs_state()
            self._vs_enter(state)
            if state == "head" and phase in ("head", "idle") and getattr(self, "cycle", None) is before:
                # Still inside a head: these bytes were all part of it (a head and its body come in
                # the same read only when the head is complete, and then the cycle is a new one).
                self._vs_head_bytes += len(data)
                if self._vs_head_bytes > max_head_bytes:
                    self._vs_refuse(431, f"request head over {max_head_bytes} bytes", "head_too_large")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._vs_enter(self._vs_state())

        # -- the state machine ----------------------------------------------------------------

        def _vs_state(self) -> str:
            cycle = getattr(self, "cycle", None)
            if cycle is None:
                return "head"  # nothing complete yet on this connection
            if not cycle.response_complete:
                return "busy"
            if cycle.more_body:
                return "linger"
            # Answered and complete.  Right after the answer that is uvicorn's keep-alive wait; once
            # bytes of another request arrive (they cancel uvicorn's timer) a new head is under way.
            return "idle" if self._vs_phase in ("busy", "linger") else "head"

        def _vs_enter(self, phase: str) -> None:
            if phase == self._vs_phase and (self._vs_timer is not None or phase in ("busy", "idle")):
                return  # a deadline runs from the start of its phase, not from the latest byte
            if phase == "head" and self._vs_phase != "head":
                self._vs_head_bytes = 0
            self._vs_cancel()
            self._vs_phase = phase
            if phase == "head":
                self._vs_timer = self.loop.call_later(header_timeout_s, self._vs_expire)
            elif phase == "linger":
                self._vs_timer = self.loop.call_later(body_timeout_s, self._vs_expire)

        def _vs_cancel(self) -> None:
            if self._vs_timer is not None:
                self._vs_timer.cancel()
                self._vs_timer = None

        def _vs_expire(self) -> None:
            self._vs_timer = None
            if self.transport.is_closing():
                return
            if self._vs_phase == "head" and self._vs_head_bytes:
                self._vs_refuse(408, f"the request head did not arrive within {header_timeout_s:g} s", "header_timeout")
            elif self._vs_phase == "head":  # connected and sent nothing: nobody to answer
                self._vs_close("idle_timeout")
            elif self._vs_phase == "linger":
                self._vs_close("body_timeout")

        def _vs_refuse(self, status: int, why: str, reason: str) -> None:
            body = f"{why}; the connection is closed\n".encode()
            self.transport.write(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                                 "content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                                 f"content-length: {len(body)}\r\n\r\n".encode() + body)
            self._vs_close(reason)

        def _vs_close(self, reason: str) -> None:
            self._vs_cancel()
            if closed is not None:
                closed.labels(reason).inc()
            self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol


def uvicorn_options(app) -> dict:
    """``uvicorn.run``/``uvicorn.Config`` keyword arguments for an app from ``create_app``: its
    ``ServeOptions``' keep-alive timeout, head size limit and the protocol class with the deadlines."""
    opts, metrics = app.state.options, app.state.metrics
    return {"http": guarded_protocol(opts.header_timeout_s, opts.body_timeout_s, opts.max_head_bytes, metrics),
            "timeout_keep_alive": opts.keepalive_timeout_s,
            # h11's own limit (a bare 400) sits one socket read (<= 256 kB) above ours, so that ours
            # answers first (431) whichever parser uvicorn uses
            "h11_max_incomplete_event_size": opts.max_head_bytes + 256 * 2**10}
