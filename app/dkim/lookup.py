"""Is a DKIM key's record published? A TXT lookup of <selector>._domainkey.<domain>, compared
with the key: match, mismatch (a record is there, with another key or none), missing (no such
name or no TXT record), or error (the lookup itself failed: timeout, SERVFAIL)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
from dkim.util import InvalidTagValueList, parse_tag_value

from app.dkim.keys import Algorithm

LOOKUP_SECONDS = 5.0
"""How long one lookup may take in all (retries and every configured resolver included)."""
Status = Literal["match", "mismatch", "missing", "error"]
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Published:
    status: Status
    detail: str
    found: list[str] = field(default_factory=list)
    """The TXT records at the name, as published (each one's strings joined)."""


def record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def resolver(servers: list[tuple[str, int]]) -> dns.asyncresolver.Resolver:
    """The system's resolver (/etc/resolv.conf), or these (POSTROOM_DNS_SERVERS)."""
    found = dns.asyncresolver.Resolver(configure=not servers)
    if servers:
        found.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in servers]
    return found


async def published(
    found: dns.asyncresolver.Resolver,
    selector: str,
    domain: str,
    algorithm: Algorithm,
    public: str,
) -> Published:
    name = record_name(selector, domain)
    try:
        answer = await found.resolve(name, "TXT", lifetime=LOOKUP_SECONDS, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return Published("missing", f"no TXT record at {name}")
    except dns.exception.DNSException as err:
        return Published("error", f"the lookup of {name} failed: {err}")
    records = [b"".join(rdata.strings).decode("ascii", "replace") for rdata in answer]
    verdicts = [_compare(record, algorithm, public) for record in records]
    if None in verdicts:
        return Published("match", f"{name} holds this key", records)
    reasons = "; ".join(dict.fromkeys(v for v in verdicts if v))
    return Published("mismatch", f"{name} does not hold this key: {reasons}", records)


def _compare(record: str, algorithm: Algorithm, public: str) -> str | None:
    """None when the record publishes this key, else what is wrong with it."""
    try:
        tags = parse_tag_value(record.encode("ascii", "replace"))
    except InvalidTagValueList:
        return "a TXT record there is not a DKIM key record"
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        return "a TXT record there is not a DKIM key record (v= is not DKIM1)"
    if b"p" not in tags:
        return "a record there has no p= tag"
    kind = tags.get(b"k", b"rsa").decode("ascii", "replace")
    if kind != algorithm.partition("-")[0]:
        return f"a record there is for k={kind}"
    key = _SPACE.sub("", tags[b"p"].decode("ascii", "replace"))
    if not key:
        return "a record there has an empty p=: the key is revoked"
    if key != public:
        return "a record there holds another key (an older one?)"
    return None
