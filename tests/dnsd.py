"""A tiny DNS server for tests: UDP on 127.0.0.1, in its own thread, answering TXT queries from a
dict (the records an admin "published"), NXDOMAIN for any other name.

    server = DnsServer().start()
    server.publish("s1._domainkey.example.com", "v=DKIM1; k=rsa; p=...")
    Settings(dns_servers=server.address)           # Postroom's resolver asks it
    dkim.verify(message, dnsfunc=server.dkim_txt)   # and so does dkimpy's verifier

`servfail` answers SERVFAIL to everything; `delay` waits before each answer.
"""

from __future__ import annotations

import socketserver
import threading
import time
from typing import Any, Self

import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

from app.dkim.keys import txt_strings


class DnsServer:
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        """TXT values by name (lower case, no trailing dot)."""
        self.servfail = False
        self.delay = 0.0
        self.queries: list[str] = []
        self.asked = threading.Event()
        """Set at the first query."""
        self._server: socketserver.ThreadingUDPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        """As POSTROOM_DNS_SERVERS takes it."""
        return f"127.0.0.1:{self.port}"

    def publish(self, name: str, *values: str) -> None:
        """Set the TXT records at `name` (none: remove the name)."""
        key = name.lower().rstrip(".")
        if values:
            self.records[key] = list(values)
        else:
            self.records.pop(key, None)

    def dkim_txt(self, name: bytes, timeout: float = 5) -> bytes | None:
        """dkimpy's `dnsfunc`: a real query to this server, the strings of the answer joined."""
        query = dns.message.make_query(name.decode("ascii"), "TXT")
        response = dns.query.udp(query, "127.0.0.1", timeout=timeout, port=self.port)
        for rrset in response.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return None

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        self.queries.append(name)
        self.asked.set()
        if self.delay:
            time.sleep(self.delay)
        if self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.TXT)
            for value in self.records[name]:
                strings = [s.encode("ascii") for s in txt_strings(value)]
                rrset.add(TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings), ttl=60)
            response.answer.append(rrset)
        return response.to_wire()

    def start(self) -> Self:
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                sock.sendto(owner.answer(data), self.client_address)

        self._server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
