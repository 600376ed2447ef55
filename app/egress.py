"""Which addresses Postroom may connect to, checked on the resolved address at save and connect.

By default link-local networks (cloud metadata at 169.254.169.254 included) are denied and
everything else, LAN relays and localhost included, is allowed: most SMTP servers live on the LAN.

SMTP resolves and checks its host itself before each connection (app/transports/smtp/). Provider
API calls go through `http_client`, whose transport does the same for every new connection: the
URL's host is resolved here, every address checked, and the socket opened to a checked address
(TLS still verifies the URL's host name), so a name that changes its answer between the check and
the connection (DNS rebinding) cannot reach a denied address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing
from dataclasses import dataclass

import httpcore
import httpx
from httpx._utils import get_environment_proxies

from app.errors import AppError, Invalid

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENY = "169.254.0.0/16,fe80::/10"


class EgressDenied(AppError):
    status_code = 422
    code = "egress_denied"


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """Parse a comma-separated list of CIDRs ("" is none)."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in value.split(",")
        if part.strip()
    )


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    deny: tuple[IPNetwork, ...]
    allow: tuple[IPNetwork, ...] = ()
    """When not empty, only these networks are reachable (deny still wins)."""
    ports: frozenset[int] = frozenset()
    """When not empty, only these ports are reachable."""

    def check_address(self, address: str, port: int | None = None) -> None:
        """Raise EgressDenied unless connecting to this IP address (and port) is allowed."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.deny):
            raise EgressDenied(f"connections to {ip} are denied by POSTROOM_EGRESS_DENY")
        if self.allow and not any(ip in net for net in self.allow):
            raise EgressDenied(f"{ip} is not in POSTROOM_EGRESS_ALLOW")
        if port is not None and self.ports and port not in self.ports:
            raise EgressDenied(f"port {port} is not in POSTROOM_EGRESS_PORTS")

    def check_port(self, port: int) -> None:
        if self.ports and port not in self.ports:
            raise EgressDenied(f"port {port} is not in POSTROOM_EGRESS_PORTS")

    async def resolve(self, host: str, port: int, *, check_port: bool = True) -> list[str]:
        """Resolve `host` and return its addresses, all of them checked; raise if any is denied.

        `check_port=False` leaves out the port allow-list (it lists SMTP ports)."""
        if check_port:
            self.check_port(port)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            self.check_address(address)
        return addresses


def check_port_setting(policy: EgressPolicy, port: int, field: str) -> None:
    """A port the policy denies is a 422 naming `field` (at save time; no I/O)."""
    try:
        policy.check_port(port)
    except EgressDenied as err:
        raise Invalid(err.message, field=field) from err


async def check_host_setting(policy: EgressPolicy, host: str, field: str) -> None:
    """A host that resolves to an address the policy denies is a 422 naming `field`.

    It resolves DNS, so callers run it before they open a database transaction. A name that
    does not resolve from here is accepted: it is checked again at every connect.
    """
    try:
        await asyncio.wait_for(policy.resolve(host, 0, check_port=False), timeout=3.0)
    except EgressDenied as err:
        raise Invalid(f"{host}: {err.message}", field=field) from err
    except (OSError, TimeoutError, UnicodeError):
        return


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: EgressPolicy, inner: httpcore.AsyncNetworkBackend) -> None:
        self._policy = policy
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._policy.resolve(host, port, check_port=False)
        except TimeoutError as err:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from err
        except (OSError, UnicodeError) as err:
            raise httpcore.ConnectError(f"cannot resolve {host}: {err}") from err
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as err:
                error = err
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("Postroom connects to no Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class EgressTransport(httpx.AsyncHTTPTransport):
    """httpx's transport whose every new connection (to the server, or to the proxy) is checked
    by `_CheckedBackend`. A denied address raises EgressDenied out of the request."""

    def __init__(self, policy: EgressPolicy, **kwargs: typing.Any) -> None:
        super().__init__(**kwargs)
        pool = self._pool
        pool._network_backend = _CheckedBackend(policy, pool._network_backend)


def http_client(policy: EgressPolicy, timeout: float) -> httpx.AsyncClient:
    """The client for provider APIs: no redirects, `timeout` per phase, every connection checked
    against `policy`; HTTP(S)_PROXY and NO_PROXY are honoured as httpx would."""
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {
        pattern: None if proxy is None else EgressTransport(policy, proxy=proxy)
        for pattern, proxy in get_environment_proxies().items()
    }
    return httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        transport=EgressTransport(policy),
        mounts=mounts,
    )
