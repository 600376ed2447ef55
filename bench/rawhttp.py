"""A minimal HTTP/1.1 keep-alive client for the load generator.

httpx spends about 3 ms of CPU per request on this 2-core machine, so with httpx the load
generator, not the service, would set the figures (a bare FastAPI endpoint answers in 0.7 ms).
This client writes prebuilt request heads and reads Content-Length answers over a pool of
connections: tens of microseconds per request. It speaks just enough HTTP for Postroom's JSON
answers; failures are raised as httpx errors so the callers handle both clients alike.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class Reply:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class RawClient:
    """Up to `max_connections` keep-alive connections to one host, shared by concurrent callers."""

    def __init__(
        self,
        host: str,
        port: int,
        headers: dict[str, str],
        max_connections: int,
        timeout: float = 120.0,
    ) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for writer in self._open:
            writer.close()
        self._open.clear()
        self._idle.clear()

    async def post(self, path: str, *, content: bytes = b"", json_body: Any = None) -> Reply:
        if json_body is not None:
            content = json.dumps(json_body).encode()
        return await self.request("POST", path, content)

    async def get(self, path: str) -> Reply:
        return await self.request("GET", path, b"")

    async def request(self, method: str, path: str, body: bytes) -> Reply:
        async with self._slots:
            reused = bool(self._idle)
            connection = self._idle.pop() if reused else await self._connect()
            try:
                async with asyncio.timeout(self._timeout):
                    try:
                        reply, keep = await self._exchange(connection, method, path, body)
                    except (asyncio.IncompleteReadError, ConnectionResetError) as err:
                        partial = (
                            err.partial if isinstance(err, asyncio.IncompleteReadError) else b""
                        )
                        if not reused or partial:
                            raise
                        # the server closed the idle connection (uvicorn keeps one open 5 s)
                        # before reading this request: send it again on a new one
                        self._discard(connection)
                        connection = await self._connect()
                        reply, keep = await self._exchange(connection, method, path, body)
            except TimeoutError as err:
                self._discard(connection)
                raise httpx.ReadTimeout(f"no answer within {self._timeout} s") from err
            except (OSError, asyncio.IncompleteReadError, ValueError) as err:
                self._discard(connection)
                raise httpx.RemoteProtocolError(repr(err)) from err
            if keep:
                self._idle.append(connection)
            else:
                self._discard(connection)
            return reply

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self._host, self._port)
        except OSError as err:
            raise httpx.ConnectError(repr(err)) from err
        self._open.add(writer)
        return reader, writer

    def _discard(self, connection: _Connection) -> None:
        connection[1].close()
        self._open.discard(connection[1])

    async def _exchange(
        self, connection: _Connection, method: str, path: str, body: bytes
    ) -> tuple[Reply, bool]:
        reader, writer = connection
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {self._host}\r\n{self._headers}"
            f"content-length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length, keep = 0, True
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
            elif name == b"transfer-encoding":
                raise ValueError("chunked answers are not supported")
        return Reply(status, await reader.readexactly(length)), keep
