"""Addresses at the API's edge: the fast path for common addresses answers exactly what
email-validator answers for the whole address, whatever the address."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.schemas import _email, _no_control, _validated

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
local_parts = st.one_of(
    st.from_regex(
        r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,30}(\.[A-Za-z0-9_-]{1,40}){0,3}", fullmatch=True
    ),
    st.text(alphabet=ATEXT + ".", min_size=0, max_size=70),
    st.sampled_from(["Postmaster", "ABUSE", "info", "a.b", ".a", "a.", "a..b", '"q"', "é", "a b"]),
    st.text(max_size=8),
)
labels = st.one_of(
    st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", fullmatch=True),
    st.text(alphabet="abcXYZ019-", min_size=0, max_size=70),
    st.sampled_from(["xn--bcher-kva", "xn--zz", "ab--cd", "bücher", "BÜCHER", "", "-a", "a-"]),
)
tlds = st.sampled_from(
    ["com", "ORG", "example", "test", "local", "localhost", "invalid", "onion", "arpa", "45", "c0m"]
)
domains = st.one_of(
    st.builds(lambda ls, tld: ".".join([*ls, tld]), st.lists(labels, max_size=5), tlds),
    st.text(max_size=12),
)


def whole(address: str) -> str:
    """What every address went through before the fast path."""
    _no_control(address)
    return _validated(address)


def outcome(check: Callable[[str], str], address: str) -> tuple[str, str]:
    try:
        return ("ok", check(address))
    except ValueError as err:
        return ("refused", str(err))


@settings(max_examples=1500, deadline=None)
@given(local=local_parts, domain=domains)
@example(local="a", domain="")
@example(local="a" * 64, domain="b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".com")
@example(local="a" * 200, domain="b" * 50 + ".com")
@example(local="Info", domain="Example.COM")
@example(local="a", domain="xn--bcher-kva.example")
def test_every_address_is_judged_as_email_validator_judges_it(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert outcome(_email, address) == outcome(whole, address)


@pytest.mark.parametrize(
    ("given_", "normalized"),
    [("Ann@Example.COM", "Ann@example.com"), ("POSTMASTER@x.org", "postmaster@x.org")],
)
def test_domains_and_rfc_2142_mailboxes_are_normalised(given_: str, normalized: str) -> None:
    assert _email(given_) == normalized
