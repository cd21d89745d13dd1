"""A TCP fault proxy on 127.0.0.1 for the SFTP tests: forward, or cut / stall / throttle the server's answers.

Faults apply to the server-to-client direction of selected connections (`only_connection`, counted
from 1; None: every connection), after `after` bytes of that connection.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass


@dataclass
class Fault:
    mode: str = "none"  # none | cut | stall | throttle
    after: int = 0  # bytes from the server passed through before the fault starts
    only_connection: int | None = None  # 1-based connection number, None: all
    rate: float = 0.0  # bytes/s for throttle


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.fault = Fault()
        self.connections = 0
        self.faults_applied = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
                number = self.connections
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, None, number), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.fault, number), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, fault: Fault | None, number: int) -> None:
        passed = 0
        applied = False
        try:
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                hit = fault is not None and fault.mode != "none" and passed + len(data) > fault.after and \
                    (fault.only_connection is None or fault.only_connection == number)
                if hit and fault is not None:
                    if not applied:
                        applied = True
                        with self._lock:
                            self.faults_applied += 1
                    keep = max(0, fault.after - passed)
                    if fault.mode == "cut":
                        dst.sendall(data[:keep])
                        break
                    if fault.mode == "stall":
                        dst.sendall(data[:keep])
                        while not self._stop.is_set():  # hold the connection open, forward nothing
                            time.sleep(0.1)
                        break
                    if fault.mode == "throttle" and fault.rate > 0:
                        time.sleep(len(data) / fault.rate)
                dst.sendall(data)
                passed += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
