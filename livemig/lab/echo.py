"""A client that keeps one TCP connection to a guest's echo service, sending a
numbered line every period, and measures what a user of the VM would see
during a migration: the largest gap between answers, and any loss."""
from __future__ import annotations

import socket
import threading
import time


class EchoStream:
    def __init__(self, host: str, port: int = 7, period_s: float = 0.02):
        self.host, self.port, self.period_s = host, port, period_s
        self.sent = 0
        self.received: list[int] = []
        self.max_gap_s = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "EchoStream":
        self._sock = socket.create_connection((self.host, self.port), timeout=5)
        self._sock.settimeout(None)
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def reset_gap(self) -> None:
        self.max_gap_s = 0.0

    def _send(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._sock.sendall(f"{self.sent}\n".encode())
            except OSError as exc:
                self.error = f"send failed: {exc}"
                return
            self.sent += 1
            next_at += self.period_s
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _receive(self) -> None:
        buf = b""
        last = time.monotonic()
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                if not self._stop.is_set():
                    self.error = f"receive failed: {exc}"
                return
            if not chunk:
                if not self._stop.is_set():
                    self.error = "connection closed by the guest"
                return
            now = time.monotonic()
            self.max_gap_s = max(self.max_gap_s, now - last)
            last = now
            buf += chunk
            *lines, buf = buf.split(b"\n")
            self.received.extend(int(x) for x in lines if x)

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until every line sent so far has come back."""
        deadline = time.monotonic() + timeout
        target = self.sent
        while time.monotonic() < deadline and len(self.received) < target:
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads[:1]:
            t.join(timeout=2)
        self.settle(2.0)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for t in self._threads[1:]:
            t.join(timeout=2)

    @property
    def in_order_without_loss(self) -> bool:
        return self.received == list(range(len(self.received)))


def ask(host: str, port: int, line: str = "", timeout: float = 5.0) -> str:
    """One request/answer to a guest service (boot id on 9, volume probe on 10)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        if line:
            s.sendall(line.encode() + b"\n")
        s.shutdown(socket.SHUT_WR) if not line else None
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} did not answer within {timeout:.0f} s") from None
            time.sleep(0.1)
