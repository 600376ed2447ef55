"""The EHLO name: the profile's `name`, else POSTROOM_HOSTNAME, else this machine's real name,
else the connection's address literal (RFC 5321 4.1.4) — never `localhost`, which is what
`socket.getfqdn()` answers on the common /etc/hosts layout (`127.0.0.1 localhost vm`)."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.transports import smtp
from app.transports.smtp import address_literal, choose_ehlo_name, is_real_name
from tests.smtpd import make_message

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("fqdn", "hostname", "expected"),
    [
        ("mail.example.com", "mail", "mail.example.com"),
        ("localhost", "vm.corp.example", "vm.corp.example"),  # 127.0.0.1 localhost vm.corp...
        ("localhost", "vm", None),  # 127.0.0.1 localhost vm: no real name, an address literal
        ("localhost.localdomain", "localhost", None),
        ("vm.localdomain", "vm", None),
        ("ip6-localhost", "ip6-loopback", None),
        ("LOCALHOST.example", "vm", None),
        ("host.example.com.", "host", "host.example.com"),  # the root's dot left out
        ("under_score.example", "vm", None),  # not a host name
        ("-bad.example", "good.example", "good.example"),
        ("a3f9c2e1b7d4", "a3f9c2e1b7d4", None),  # a container's id
        ("box.corp.local", "box", "box.corp.local"),
    ],
)
def test_choosing_the_machine_name(fqdn, hostname, expected):
    assert choose_ehlo_name(fqdn, hostname) == expected
    if expected is not None:
        assert is_real_name(expected)


@pytest.mark.parametrize(
    ("address", "literal"),
    [
        ("192.0.2.7", "[192.0.2.7]"),
        ("2001:db8::1", "[IPv6:2001:db8::1]"),
        ("::ffff:192.0.2.7", "[192.0.2.7]"),
        ("fe80::1%eth0", "[IPv6:fe80::1]"),
    ],
)
def test_address_literals(address, literal):
    assert address_literal(address) == literal


async def test_a_machine_named_localhost_greets_with_its_address(
    smtp_server, smtp_context, monkeypatch
):
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "localhost")
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")

    await smtp.create("t", smtp_server.config(), smtp_context).send(make_message())

    assert smtp_server.sessions[0].commands[0] == "EHLO [127.0.0.1]"


async def test_a_machine_with_a_real_name_greets_with_it(smtp_server, smtp_context, monkeypatch):
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "localhost")
    monkeypatch.setattr(socket, "gethostname", lambda: "vm.corp.example")

    await smtp.create("t", smtp_server.config(), smtp_context).send(make_message())

    assert smtp_server.sessions[0].commands[0] == "EHLO vm.corp.example"


async def test_postroom_hostname_sets_it_and_the_profile_name_wins(smtp_server, smtp_context):
    context = dataclasses.replace(smtp_context, hostname="relay-client.example.org")

    await smtp.create("t", smtp_server.config(), context).send(make_message())
    await smtp.create("t", smtp_server.config(name="bi.example.org"), context).send(make_message())

    first, second = smtp_server.sessions
    assert first.commands[0] == "EHLO relay-client.example.org"
    assert second.commands[0] == "EHLO bi.example.org"


def test_the_setting(monkeypatch):
    monkeypatch.setenv("POSTROOM_HOSTNAME", "mx-out.example.com")
    assert Settings(_env_file=None).hostname == "mx-out.example.com"
    monkeypatch.setenv("POSTROOM_HOSTNAME", "bad name\r\nRSET")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings (conftest), with POSTROOM_HOSTNAME set."""
    return settings.model_copy(update={"hostname": "relay-client.example.org"})


async def test_the_service_hands_the_setting_to_its_transports(runtime):
    assert runtime.transport_context.hostname == "relay-client.example.org"
