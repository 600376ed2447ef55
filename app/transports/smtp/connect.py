"""Opening an SMTP connection up to the socket the session takes: the host resolved through the
egress policy, TCP (or a proxy's tunnel) to a checked address under `connectionTimeout`; the
client TLS context; and the name to greet with when the profile sets none."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import ssl
import tempfile

from python_socks import ProxyType
from python_socks.async_.asyncio import Proxy

from app.egress import EgressPolicy
from app.transports.errors import ConfigError
from app.transports.proxy import http_tunnel
from app.transports.smtp.config import PROXY_SCHEMES, ProxyUrl, SmtpConfig
from app.transports.smtp.translate import Tracker


async def open_socket(config: SmtpConfig, egress: EgressPolicy, tracker: Tracker) -> socket.socket:
    """A socket connected to the server (through the proxy when one is set): the `dns` and
    `connect` phases, both within `connectionTimeout`."""
    port = config.effective_port
    deadline = asyncio.get_running_loop().time() + config.connection_timeout / 1000
    with tracker.phase("dns") as step:
        proxy = ProxyUrl.parse(config.proxy.get_secret_value()) if config.proxy else None
        host, host_port = (proxy.host, proxy.port) if proxy else (config.host, port)
        async with asyncio.timeout_at(deadline):
            addresses = await egress.resolve(host, host_port)
        step.detail = f"{host}: {', '.join(addresses)}"
        step.data["addresses"] = addresses
        if proxy is not None:
            step.data["proxy"] = proxy.display
    with tracker.phase("connect") as step:
        async with asyncio.timeout_at(deadline):
            if proxy is None:
                sock = await _tcp_connect(addresses, port)
            else:
                sock = await _through_proxy(proxy, addresses, config.host, port)
        try:
            peer = sock.getpeername()
        except OSError:
            sock.close()
            raise
        step.detail = f"{peer[0]} port {peer[1]}"
        if proxy is not None:
            step.detail = f"{config.host} port {port} through {proxy.display} ({step.detail})"
    return sock


async def _through_proxy(
    url: ProxyUrl, addresses: list[str], host: str, port: int
) -> socket.socket:
    """A socket tunnelled to host:port through the proxy at the first address that answers.

    HTTP CONNECT is done here (app/transports/proxy.py) so that the server's greeting, when it
    comes in the proxy's 200 segment, is not lost; SOCKS goes through python-socks."""
    proxy_type, remote_dns, _ = PROXY_SCHEMES[url.scheme]
    if proxy_type is ProxyType.HTTP:
        tunnel = await _tcp_connect(addresses, url.port)
        try:
            await http_tunnel(
                tunnel,
                host,
                port,
                username=url.username,
                password=url.password,
                proxy=f"the proxy {url.display}",
            )
        except BaseException:
            tunnel.close()
            raise
        return tunnel
    error: OSError = OSError(f"no address for the proxy {url.display}")
    for address in addresses:
        proxy = Proxy(proxy_type, address, url.port, url.username, url.password, rdns=remote_dns)
        try:
            sock: socket.socket = await proxy.connect(host, port)
        except OSError as err:
            error = err
        else:
            return sock
    raise error


async def _tcp_connect(addresses: list[str], port: int) -> socket.socket:
    """A TCP socket connected to the first of `addresses` that accepts."""
    loop = asyncio.get_running_loop()
    error: OSError = OSError("no address to connect to")
    for address in addresses:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (address, port))
        except OSError as err:
            sock.close()
            error = err
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    raise error


class TlsContext:
    """A profile's client TLS context, built on first use (it reads the CA store) and kept: a
    profile that never meets STARTTLS never builds it."""

    __slots__ = ("_config", "_context")

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._context: ssl.SSLContext | None = None

    async def get(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = await asyncio.to_thread(_tls_context, self._config)
        return self._context


def _tls_context(config: SmtpConfig) -> ssl.SSLContext:
    """TLS 1.2 or later with verified certificates; `caCertificates` replaces the system CAs."""
    if config.ca_certificates is None:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=config.ca_certificates)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.client_certificate is not None and config.client_key is not None:
        _load_client_certificate(
            context, config.client_certificate, config.client_key.get_secret_value()
        )
    return context


def _load_client_certificate(context: ssl.SSLContext, certificate: str, key: str) -> None:
    """ssl loads a certificate chain only from a file: a 0600 temporary one, removed at once."""
    fd, path = tempfile.mkstemp(prefix="postroom-", suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(f"{certificate.strip()}\n{key.strip()}\n")
        context.load_cert_chain(path)
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError(
            "clientCertificate and clientKey are not a matching PEM certificate and key",
            field="clientKey",
        ) from err
    finally:
        os.unlink(path)


_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_real_name(name: str) -> bool:
    """A name that tells the server who we are: a dotted host name, not localhost (RFC 5321
    4.1.4 wants the client's FQDN, else an address literal)."""
    labels = name.rstrip(".").split(".")
    return (
        len(labels) >= 2
        and labels[0].lower() not in _LOOPBACK_NAMES
        and labels[-1].lower() != "localdomain"
        and all(_LABEL.fullmatch(label) for label in labels)
    )


def choose_ehlo_name(fqdn: str, hostname: str) -> str | None:
    """This machine's name for EHLO: `getfqdn()` when it is a real name, else `gethostname()`
    when that is. `getfqdn()` answers `localhost` on the common /etc/hosts layout (127.0.0.1
    localhost <name>), which servers distrust; None means: use the address literal."""
    for name in (fqdn, hostname):
        if is_real_name(name):
            return name.rstrip(".")
    return None


def machine_name() -> str:
    """choose_ehlo_name of this machine ("" when it has no real name); blocking (DNS)."""
    return choose_ehlo_name(socket.getfqdn(), socket.gethostname()) or ""


def address_literal(address: str) -> str:
    """RFC 5321 4.1.3's address literal of the connection's local address: [192.0.2.1] or
    [IPv6:2001:db8::1]."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[{ip}]" if ip.version == 4 else f"[IPv6:{ip}]"
