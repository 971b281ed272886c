"""A TCP proxy in front of a server (moto, vLLM) that can cut it off: connections in flight
are dropped and new ones closed at once until it is restored. It counts the bytes sent each
way, so a test can tell a resumed transfer from a restarted one, and can arm an outage that
starts by itself: after N bytes one way, or when a request names a marker; or run an action
at the moment a marker passes (to kill a server mid-answer, say)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class CuttableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent_upstream = 0
        self.sent_downstream = 0
        self.outages = 0
        self._trip: Callable[[bytes, bool], bool] | None = None
        self._hook: Callable[[bytes, bool], bytes] | None = None
        self._outage = 0.0
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Storage is gone: drop every connection, refuse new ones."""
        self._down.set()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        self._down.clear()

    def cut_after(self, n_bytes: int, outage: float, downstream: bool = True) -> None:
        """Once ``n_bytes`` more have gone that way, cut storage off for ``outage`` s."""
        start = self.sent_downstream if downstream else self.sent_upstream

        def trip(chunk: bytes, upstream: bool) -> bool:
            now = self.sent_upstream if upstream else self.sent_downstream
            return upstream != downstream and now - start >= n_bytes

        self._arm(trip, outage)

    def cut_on(self, marker: bytes, outage: float) -> None:
        """When a request's bytes hold ``marker`` (a key, say), cut storage off for ``outage`` s."""
        self._arm(lambda chunk, upstream: upstream and marker in chunk, outage)

    def when(
        self, marker: bytes, action: Callable[[], None], upstream: bool = False, hold: bool = False
    ) -> None:
        """Run ``action`` once, before passing on the first chunk that holds ``marker`` going
        that way (downstream by default: what the server answers). With ``hold``, pass on that
        chunk only to the end of the line holding the marker's event (its blank line), and
        nothing more that way after it: a slow proxy thread that reads a whole answer at once
        still lets the client see exactly one event."""
        fired = threading.Event()

        def trip(chunk: bytes, going_up: bool) -> bytes:
            if going_up != upstream:
                return chunk
            if fired.is_set():
                return b"" if hold else chunk
            if marker not in chunk:
                return chunk
            fired.set()
            action()
            if not hold:
                return chunk
            end = chunk.find(b"\n\n", chunk.index(marker))
            return chunk if end < 0 else chunk[: end + 2]

        with self._lock:
            self._hook = trip

    def _arm(self, trip: Callable[[bytes, bool], bool], outage: float) -> None:
        with self._lock:
            self._trip, self._outage = trip, outage

    def _tripped(self, chunk: bytes, upstream: bool) -> None:
        with self._lock:
            trip = self._trip
            if trip is None or not trip(chunk, upstream):
                return
            self._trip = None
            self.outages += 1
        self.cut()
        timer = threading.Timer(self._outage, self.restore)
        timer.daemon = True
        timer.start()

    def _before(self, chunk: bytes, upstream: bool) -> bytes:
        with self._lock:
            hook = self._hook
        return chunk if hook is None else hook(chunk, upstream)

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while chunk := source.recv(1 << 16):
                chunk = self._before(chunk, upstream)
                sink.sendall(chunk)
                with self._lock:
                    if upstream:
                        self.sent_upstream += len(chunk)
                    else:
                        self.sent_downstream += len(chunk)
                self._tripped(chunk, upstream)
        except OSError:
            pass
        finally:  # shut down before closing: a close alone sends nothing while the other
            # pump thread still blocks in recv on the socket, and the peer would wait forever
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
