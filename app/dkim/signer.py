"""Signing composed messages: one DKIM-Signature field, relaxed/relaxed, never `l=`.

The header and body canonicalization, the header selection and the folding are dkimpy's; the
private-key operation is OpenSSL's (`cryptography`), on a key parsed once per profile. dkimpy's own
`sign()` parses the PEM on every call and does RSA in pure Python: about 10 ms a message for a
2048-bit key, ten times what delivering one costs (bench/dkim_sign.py measures both).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import dkim
from dkim.canonicalization import (
    CanonicalizationPolicy,
    correct_empty_body,
    strip_trailing_lines,
)

from app.dkim.keys import DkimKey
from app.servers.carriage import CARRIAGE

NAME = b"DKIM-Signature"
RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")

OVERSIGNED = frozenset(
    {
        b"from",
        b"sender",
        b"reply-to",
        b"subject",
        b"date",
        b"message-id",
        b"to",
        b"cc",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
    }
)
"""Fields named once more in h= than they occur (RFC 6376 8.15): a second From, Subject or
List-Unsubscribe added on the way breaks the signature instead of being shown to the reader."""
SIGNED = OVERSIGNED | {
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"list-id",
}
"""RFC 6376 5.4.1's list, less the Resent-* fields (Postroom writes none), plus
List-Unsubscribe-Post, which RFC 8058 section 4 requires the signature to cover: the oversigned
fields and these. Bcc never."""


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs with one profile's active key; built once per profile version, not per message."""

    domain: str
    """The d= tag, in A-labels."""
    selector: str
    key: DkimKey
    unsigned: frozenset[bytes] = frozenset()
    """Fields (lower case) the profile's transport may rewrite (app/servers/carriage.py): left out
    of h=."""
    clock: Callable[[], float] = time.time

    @classmethod
    def through(cls, transport_type: str, domain: str, selector: str, key: DkimKey) -> Signer:
        """A signer for mail through a transport of this type: without the fields it rewrites."""
        unsigned = CARRIAGE[transport_type].unsigned
        return cls(domain, selector, key, frozenset(name.encode("ascii") for name in unsigned))

    def signature(self, message: bytes) -> bytes:
        """The DKIM-Signature field for `message`, ending in CRLF, to put in front of it. Bcc is
        never signed, so the same field holds for the message with and without its Bcc header.

        `message` has CRLF line ends only (compose writes no other), so the body is what follows
        the first empty line as it is, and only the header block goes through dkimpy's parser."""
        head, _, body = message.partition(b"\r\n\r\n")
        parsed = dkim.rfc822_parse(head + b"\r\n\r\n")
        headers = cast(list[list[bytes]], parsed[0])
        include = self._include(headers)
        body_hash = hashlib.sha256(canonical_body(body)).digest()
        fields = [
            (b"v", b"1"),
            (b"a", self.key.algorithm.encode("ascii")),
            (b"c", b"relaxed/relaxed"),
            (b"d", self.domain.encode("ascii")),
            (b"s", self.selector.encode("ascii")),
            (b"t", str(int(self.clock())).encode("ascii")),
            (b"h", b" : ".join(include)),  # spaces: folding must not split a name
            (b"bh", base64.b64encode(body_hash)),
            (b"b", b"0" * 60),
            # the placeholder puts b= on a line of its own, so folding the field again once the
            # signature is in changes none of the lines before it (dkimpy does the same)
        ]
        folded = _fold(b"; ".join(b"=".join(tag) for tag in fields))
        hasher = hashlib.sha256()
        dkim.hash_headers(
            hasher,
            RELAXED,
            RELAXED.canonicalize_headers(headers),
            include,
            (NAME, b" " + dkim.RE_BTAG.sub(b"\\1", folded)),
            dict(fields),
        )
        fields[-1] = (b"b", base64.b64encode(self.key.sign(hasher.digest())))
        return NAME + b": " + _fold(b"; ".join(b"=".join(tag) for tag in fields) + b"\r\n")

    def _include(self, headers: Sequence[Sequence[bytes]]) -> list[bytes]:
        wanted = SIGNED - self.unsigned
        signed = [name for name in (field[0].lower() for field in headers) if name in wanted]
        return signed + list(dict.fromkeys(name for name in signed if name in OVERSIGNED))


def canonical_body(body: bytes) -> bytes:
    """The relaxed body (RFC 6376 3.4.4), as dkimpy makes it. Its whitespace rules are regular
    expressions over the whole body, ~30 ms for a 140 kB attachment here (bench/dkim_sign.py);
    they change nothing in a body without a tab, two spaces in a row or a space before a line end,
    which base64 and most quoted-printable parts are, so such a body gets only the steps that
    can change it: its empty lines at the end removed, a line end added if missing."""
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        return cast(bytes, RELAXED.canonicalize_body(body))
    return cast(bytes, correct_empty_body(strip_trailing_lines(body)))


def _fold(value: bytes) -> bytes:
    return cast(bytes, dkim.fold(value, namelen=len(NAME)))
