"""A TCP front for an endpoint that goes away and comes back, at an address that never changes:

    front = Front(("127.0.0.1", server_port))   # clients use front.url
    front.cut()       # from now on every connection is dropped unanswered (the endpoint is gone)
    front.dropped     # the request line of each dropped connection
    front.restore()   # forwarding again
    front.close()
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Front:
    """A TCP front of `target` on 127.0.0.1, on a port it binds itself and keeps: forwards every
    connection until cut(); then closes them all and, for each new connection, reads the request
    line, records it and closes the connection without an answer (an endpoint that went away);
    restore() forwards again (the same endpoint is back, at the same address)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.cut_off = threading.Event()
        self.dropped: list[str] = []  # the request lines of the connections dropped after the cut
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                threading.Thread(target=self._drop, args=(conn,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._socks += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _drop(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            line = conn.makefile("rb").readline(4096).decode(errors="replace").strip()
            self.dropped.append(line)

    def restore(self) -> None:
        self.cut_off.clear()

    def cut(self) -> None:
        self.cut_off.set()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._socks.clear()

    def close(self) -> None:
        self._listener.close()
        self.cut()
