"""Where the local API listens, and the socket servers behind it: TCP (IPv4, IPv6) or a Unix
socket, a bounded number of connections served at once, closed on stop.

:mod:`edgeml.agent.api` makes the request handler; this module binds it. A Unix socket is
created with the mode asked for (bound under a temporary name, then renamed), and a stale
socket left by a dead agent is replaced; a live one is not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgeml.toolkit.errors import ConfigError

log = logging.getLogger("edgeml.agent.api")

_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; leave room for ".tmpPID"


# ----------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class ListenAddress:
    """Where the API listens: ``HOST:PORT`` (``[v6]:PORT``) or ``unix:/path``."""

    host: str = ""
    port: int = 0
    unix_path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse a listen address.

        Raises:
            ConfigError: neither ``HOST:PORT`` nor ``unix:/path``.
        """
        if not isinstance(text, str) or not text:
            raise ConfigError(f"api listen address must be HOST:PORT or unix:/path, got {text!r}")
        if text.startswith("unix:"):
            path = text[5:]
            if not path:
                raise ConfigError(f"api listen address {text!r} names no socket path")
            if len(os.fsencode(path)) > _UNIX_PATH_MAX:
                raise ConfigError(
                    f"api listen address {text!r}: a Unix socket path may hold at most "
                    f"{_UNIX_PATH_MAX} bytes"
                )
            return cls(unix_path=Path(path))
        host, _, port = text.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"api listen address must be HOST:PORT or unix:/path, got {text!r}")
        return cls(host=host, port=int(port))

    @property
    def loopback(self) -> bool:
        """True for a Unix socket, ``localhost`` and loopback IPs."""
        if self.unix_path is not None or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# ------------------------------------------------------------------------- servers


class _Connections:
    """Bounds the connections served at once and remembers them, to close them on stop."""

    def _init_connections(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                body = b'{"error":"busy","message":"too many connections"}'
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._forget(request)

    def _forget(self, request: Any) -> None:
        with self._open_lock:
            if request in self._open:
                self._open.discard(request)
                self._slots.release()

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def wait_for_handlers(self, timeout: float) -> bool:
        """Wait until every connection's handler has returned (a request being answered has
        been answered and recorded); False if some had not by ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._open_lock:
                if not self._open:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("a connection of the local API failed", exc_info=True)


class _TCPServer(_Connections, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks the resolver for the host's FQDN: slow, or stuck, on a
        # device with no DNS. Nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(_Connections, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    socket_mode = 0o600
    _inode: int | None = None

    def server_bind(self) -> None:
        """Bind under a temporary name, set the mode, rename over the final path: the
        socket never exists at its path with looser permissions."""
        final = str(self.server_address)
        temporary = f"{final}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        self.socket.bind(temporary)
        try:
            os.chmod(temporary, self.socket_mode)
            os.replace(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._inode = os.lstat(final).st_ino
        self.server_address = final

    def server_close(self) -> None:
        super().server_close()
        path = str(self.server_address)
        with contextlib.suppress(OSError):
            if os.lstat(path).st_ino == self._inode:  # still ours: not a newer agent's
                os.unlink(path)


def _check_socket_path(path: Path) -> None:
    """Refuse a path that holds something other than a dead agent's socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"api listen socket {path} exists and is not a socket; remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale: the rename in server_bind replaces it
    except OSError as error:
        raise ConfigError(f"api listen socket {path} cannot be checked: {error}") from None
    finally:
        probe.close()
    raise ConfigError(f"api listen socket {path} is in use by a running process")


def bind_server(
    listen: ListenAddress,
    handler: type[BaseHTTPRequestHandler],
    max_connections: int,
    socket_mode: int,
) -> Any:
    try:
        if listen.unix_path is not None:
            _check_socket_path(listen.unix_path)
            server_class = type("_ModeUnixServer", (_UnixServer,), {"socket_mode": socket_mode})
            server: Any = server_class(str(listen.unix_path), handler, bind_and_activate=False)
        else:
            family = _TCP6Server if ":" in listen.host else _TCPServer
            server = family((listen.host, listen.port), handler, bind_and_activate=False)
    except OSError as error:
        raise ConfigError(f"api listen address {listen}: {error}") from None
    server._init_connections(max_connections)
    try:
        server.server_bind()
        server.server_activate()
    except OSError as error:
        server.server_close()
        raise ConfigError(f"api listen address {listen}: cannot listen: {error}") from None
    return server
