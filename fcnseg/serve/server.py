"""Running the app under uvicorn with the limits a public port needs: ``run(app, ...)``.

uvicorn bounds the connections (``limit_concurrency``: a request beyond it is answered 503)
and the idle time between requests (``timeout_keep_alive``), but waits for a request's
headers forever: ``header_timeout`` closes a connection whose headers have not all arrived
within that many seconds after it opened (or after its previous answer), so a client that
trickles its headers (slowloris) holds a socket for seconds, not for ever. The body's time
is the app's ``read_timeout``. On SIGTERM (or Ctrl-C) the server drains: /readyz answers
503, the listening socket closes, the requests in progress finish (up to ``drain_timeout``
seconds), then the process exits 0.
"""

from __future__ import annotations

import errno
import logging
import socket

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fcnseg.errors import ConfigError

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 10.0
KEEP_ALIVE = 5.0
MAX_HEADER_BYTES = 16 * 1024  # h11's incomplete-event limit: the request line and headers


class _HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on each request's headers."""

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:
        if not self.service.draining:
            self.service.draining = True
            log.info("fcnseg serve: draining: %d request(s) in progress finish, new connections are refused", self.service.active)
        super().handle_exit(sig, frame)


def listen(host: str, port: int) -> socket.socket:
    """The bound listening socket; ``ConfigError`` (one line) when the address is taken or
    cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        fix = "stop the other server or pass another --port" if e.errno == errno.EADDRINUSE else "pass an address of this machine as --host (127.0.0.1, 0.0.0.0, ...)"
        if e.errno in (errno.EACCES, errno.EPERM):
            fix = "ports below 1024 need privileges: pass --port 8000 or above"
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; {fix}") from None
    sock.set_inheritable(True)
    return sock


def run(app, *, host: str = "127.0.0.1", port: int = 8000, max_connections: int = 512,
        header_timeout: float = HEADER_TIMEOUT, drain_timeout: float = 30.0) -> None:
    """Serves ``app`` (from ``create_app``) until SIGTERM/Ctrl-C, then drains."""
    sock = listen(host, port)
    protocol = type("HeaderDeadline", (_HeaderDeadline,), {"header_timeout": header_timeout})
    config = uvicorn.Config(
        app, http=protocol, limit_concurrency=max_connections, timeout_keep_alive=KEEP_ALIVE,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_graceful_shutdown=drain_timeout,
        log_level="info", access_log=False,  # the app logs each request with its id
    )
    _DrainingServer(config, app.state.service).run(sockets=[sock])
