"""A profile's DKIM keys: made or imported, stored, rotated, checked in DNS, and the Signer built
from the active one.

Two slots: `active` signs every message through the profile; `next` waits until its DNS record is
published, and rotation swaps them, so the key that signed until then stays published under its
own selector for mail still in flight. The public side is stored in clear (the `dkim` column), the
private keys encrypted (`dkim_keys`, one Fernet token). A change to them leaves the profile's
`updated_at`, so its live transport (and its pooled connections) stays; the delivery engine's
signer cache is keyed on the encrypted token instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import datetime
from typing import Any

import dns.asyncresolver
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import service as audit
from app.audit.service import Secret
from app.crypto import SecretBox
from app.db import transaction, utcnow
from app.dkim import keys, lookup
from app.dkim.keys import Algorithm, DkimKey, KeyRefused
from app.dkim.schemas import DkimCheck, DkimKeyIn, DkimKeyOut, DkimOut, DnsRecord, Slot
from app.dkim.signer import Signer
from app.errors import Conflict, Invalid
from app.identity import Actor
from app.schemas import CamelModel, a_label_domain
from app.servers.carriage import CARRIAGE
from app.servers.models import ServerProfile
from app.servers.service import get_profile
from app.transports.urls import check_host


class StoredKey(CamelModel):
    domain: str
    selector: str
    algorithm: Algorithm
    bits: int
    public_key: str
    imported: bool
    created_at: datetime

    def out(self) -> DkimKeyOut:
        value = keys.record(self.algorithm, self.public_key)
        return DkimKeyOut(
            domain=self.domain,
            selector=self.selector,
            algorithm=self.algorithm,
            bits=self.bits,
            imported=self.imported,
            created_at=self.created_at,
            dns=DnsRecord(
                name=lookup.record_name(self.selector, self.domain),
                value=value,
                strings=keys.txt_strings(value),
            ),
        )


class DkimState(CamelModel):
    active: StoredKey | None = None
    next: StoredKey | None = None

    def slots(self) -> list[tuple[Slot, StoredKey]]:
        pairs: list[tuple[Slot, StoredKey | None]] = [("active", self.active), ("next", self.next)]
        return [(slot, key) for slot, key in pairs if key is not None]

    def stored(self) -> dict[str, Any] | None:
        return self.model_dump(mode="json", by_alias=True) if self.active else None


def state_of(profile: ServerProfile) -> DkimState:
    return DkimState.model_validate(profile.dkim or {})


def out(name: str, type_: str, state: DkimState) -> DkimOut:
    carriage = CARRIAGE[type_]
    return DkimOut(
        server=name,
        signing=state.active is not None,
        carried=carriage.carried,
        note=carriage.note,
        active=state.active.out() if state.active else None,
        next=state.next.out() if state.next else None,
    )


def signer_of(profile: ServerProfile, box: SecretBox, type_: str | None = None) -> Signer | None:
    """The profile's signer, or None when it has no active key (or its type, `type_` when an
    unsaved change sets one, cannot carry a signature). Parses the key: build it once."""
    carriage = CARRIAGE[type_ or profile.type]
    active = state_of(profile).active
    if active is None or profile.dkim_keys is None or not carriage.carried:
        return None
    key = keys.load(box.decrypt(profile.dkim_keys)["active"], active.algorithm)
    return Signer.through(type_ or profile.type, active.domain, active.selector, key)


async def make_key(body: DkimKeyIn) -> DkimKey:
    """The key the body asks for, made or imported, in a thread (CPU-bound: an RSA key takes up
    to a few hundred milliseconds), before any database work. Raises Invalid naming the field."""
    algorithm = body.algorithm
    if body.bits is not None and (body.private_key is not None or algorithm == "ed25519-sha256"):
        raise Invalid("bits is the size of an RSA key made here", field="bits")
    try:
        if body.private_key is not None:
            return await asyncio.to_thread(
                keys.load, body.private_key.get_secret_value(), algorithm
            )
    except KeyRefused as err:
        raise Invalid(f"privateKey {err}", field="privateKey") from err
    return await asyncio.to_thread(
        keys.generate, algorithm or "rsa-sha256", body.bits or keys.MIN_RSA_BITS
    )


async def add_key(
    session: AsyncSession,
    box: SecretBox,
    name: str,
    body: DkimKeyIn,
    key: DkimKey,
    *,
    actor: Actor | None,
) -> DkimOut:
    """Store `key`: as the active key when the profile has none (it signs from now on), else as
    the next key (replacing any next key there was)."""
    profile = await get_profile(session, name)
    carriage = CARRIAGE[profile.type]
    if not carriage.carried:
        raise Conflict(f"a {profile.type} profile cannot sign: {carriage.note}")
    state = state_of(profile)
    given = body.domain or (state.active.domain if state.active else None)
    domain = signing_domain(given, profile.sender_email)
    slot: Slot = "next" if state.active else "active"
    if state.active and (body.selector, domain) == (state.active.selector, state.active.domain):
        raise Invalid(
            f"selector {body.selector!r} is the active key's: the next key needs another one, so "
            "both records can be published at once while mail signed with either is read",
            field="selector",
        )
    stored = StoredKey(
        domain=domain,
        selector=body.selector,
        algorithm=key.algorithm,
        bits=key.bits,
        public_key=key.public,
        imported=body.private_key is not None,
        created_at=utcnow(),
    )
    private = box.decrypt(profile.dkim_keys) if profile.dkim_keys else {}
    state = state.model_copy(update={slot: stored})
    profile.dkim = state.stored()
    profile.dkim_keys = box.encrypt({**private, slot: key.pem()})
    await session.flush()
    what: dict[str, Any] = {
        slot: {**(_audited(stored) or {}), "privateKey": Secret(profile.dkim_keys)}
    }
    await audit.record(session, actor, "dkim.create", name, audit.changes(None, what))
    return out(profile.name, profile.type, state)


def _audited(key: StoredKey | None) -> dict[str, Any] | None:
    """A key as the audit log compares it: where it is published, never its private half."""
    if key is None:
        return None
    return {"selector": key.selector, "domain": key.domain, "algorithm": key.algorithm}


def signing_domain(given: str | None, sender: str | None) -> str:
    """The d= domain in A-labels: a DNS name of two labels or more, aligned with the sender's
    domain (the same, a parent or a subdomain: DMARC's relaxed alignment, without a public suffix
    list). Raises Invalid naming `domain`."""
    sender_domain = a_label_domain(sender.rpartition("@")[2].lower()) if sender else None
    if given is None:
        if sender_domain is None:
            raise Invalid(
                "give the signing domain: the profile has no senderEmail to take it from",
                field="domain",
            )
        return sender_domain
    name = given.strip().removesuffix(".").lower()
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        raise Invalid("domain must be a domain name, not an address", field="domain")
    try:
        check_host(name)
    except ValueError as err:
        raise Invalid(f"domain: {err}", field="domain") from err
    domain = a_label_domain(name)
    if "." not in domain:
        raise Invalid(f"domain {given!r} is a single label: give the full domain", field="domain")
    if sender_domain and not _aligned(domain, sender_domain):
        raise Invalid(
            f"domain {domain} is not the sender's domain ({sender_domain}), nor a parent or a "
            "subdomain of it: DMARC would not count the signature",
            field="domain",
        )
    return domain


def _aligned(one: str, other: str) -> bool:
    return one == other or one.endswith("." + other) or other.endswith("." + one)


async def remove(session: AsyncSession, name: str, *, actor: Actor | None) -> None:
    """Forget the profile's keys: its mail goes out unsigned from now on."""
    profile = await get_profile(session, name)
    state = state_of(profile)
    profile.dkim = None
    profile.dkim_keys = None
    await session.flush()
    what = {"active": _audited(state.active), "next": _audited(state.next)}
    await audit.record(session, actor, "dkim.delete", name, audit.changes(what, None))


async def rotate(
    sessions: async_sessionmaker[AsyncSession],
    box: SecretBox,
    resolver: dns.asyncresolver.Resolver,
    name: str,
    *,
    force: bool,
    actor: Actor | None,
) -> DkimOut:
    """Swap the keys: the next one signs from now on, the active one becomes the next (still
    published for mail in flight). Unless `force`, the next key's record must be found in DNS
    first. No session is held across the lookup: the swap is fenced on the keys it read."""
    async with sessions() as session:
        profile = await get_profile(session, name)
        type_, state, token = profile.type, state_of(profile), profile.dkim_keys
    if state.next is None or token is None:
        raise Conflict("there is no next key to rotate to: create one first (POST .../dkim)")
    if not force:
        found = await lookup.published(
            resolver,
            state.next.selector,
            state.next.domain,
            state.next.algorithm,
            state.next.public_key,
        )
        if found.status != "match":
            raise Conflict(
                f"the next key's record is not found in DNS ({found.detail}): publish it, or "
                'give "force": true to rotate all the same',
                details=[{"field": "force", "message": found.detail}],
            )
    private = box.decrypt(token)
    swapped = DkimState(active=state.next, next=state.active)
    async with transaction(sessions) as session:
        done = await session.execute(
            update(ServerProfile)
            .where(ServerProfile.name == name, ServerProfile.dkim_keys == token)
            .values(
                dkim=swapped.stored(),
                dkim_keys=box.encrypt({"active": private["next"], "next": private["active"]}),
            )
        )
        if getattr(done, "rowcount", 0):
            before = {"active": _audited(state.active), "next": _audited(state.next)}
            after = {"active": _audited(swapped.active), "next": _audited(swapped.next)}
            await audit.record(session, actor, "dkim.rotate", name, audit.changes(before, after))
    if not getattr(done, "rowcount", 0):
        raise Conflict("the profile's DKIM keys changed meanwhile: look again and retry")
    return out(name, type_, swapped)


async def checks(resolver: dns.asyncresolver.Resolver, state: DkimState) -> list[DkimCheck]:
    """Each key's DNS record, looked up at once."""
    found = await asyncio.gather(
        *(
            lookup.published(resolver, key.selector, key.domain, key.algorithm, key.public_key)
            for _, key in state.slots()
        )
    )
    return [
        DkimCheck(
            slot=slot,
            name=lookup.record_name(key.selector, key.domain),
            status=published.status,
            detail=published.detail,
            found=published.found,
        )
        for (slot, key), published in zip(state.slots(), found, strict=True)
    ]
