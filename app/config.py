"""Settings from the environment (prefix POSTROOM_). Built once by the entry point and injected."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTROOM_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    """Holds the SQLite database, the key file and the built-in server's outbox."""
    database_url: str | None = None
    """sqlite+aiosqlite:///... or postgresql+asyncpg://...; default: SQLite in the data dir."""
    secret_keys: str = ""
    """Comma-separated Fernet keys: the first encrypts, all decrypt. Default: a key file."""

    dispatcher: bool = True
    """Run the dispatcher inside the API process (the embedded default)."""
    dispatcher_concurrency: int = Field(256, ge=1, le=10_000)
    """Messages claimed and not yet finished, at most: they wait for their profile's connections
    (`maxConnections`), so this only needs to be large enough to keep every connection busy."""
    dispatcher_batch: int = Field(128, ge=1, le=10_000)
    """Messages claimed by one claim transaction, at most."""
    poll_interval: float = Field(1.0, gt=0)
    lease_seconds: float = Field(900.0, gt=0)
    """How long a claimed message stays reserved before it is swept back to the queue."""
    attempt_timeout: float = Field(780.0, gt=0)
    """The longest one delivery attempt may take (every SMTP transaction or API call of it): past
    it the attempt is cut and retried. Start-up refuses a lease that is not longer than this."""

    retry_base: float = Field(60.0, gt=0)
    retry_max: float = Field(1800.0, gt=0)
    max_message_age: float = Field(86_400.0, gt=0)

    webhook_retry_base: float = Field(10.0, gt=0)
    webhook_retry_max: float = Field(86_400.0, gt=0)
    """Webhook deliveries: the wait after a failed attempt doubles from the base up to this."""
    webhook_max_age: float = Field(259_200.0, gt=0)
    """A webhook delivery still failing this long after its event (3 days) is given up."""

    retention_body_days: float = Field(30.0, gt=0)
    """Days a finished message keeps its bodies, attachments and template data, counted from its
    sendAt or else its acceptance; then the purge removes them, and its record and events stay."""
    retention_record_days: float = Field(400.0, gt=0)
    """Days a finished message's record is kept at all (with its recipients, attempts, events)."""
    purge_interval: float = Field(300.0, gt=0)
    """Seconds between two passes of the retention purge (it runs beside each dispatcher)."""
    purge_batch: int = Field(500, ge=1, le=100_000)
    """Rows one purge transaction touches at most: messages, their recipients and their events
    (a message larger than that goes alone)."""

    max_message_bytes: int = Field(10_240_000, gt=0)
    max_visible_recipients: int = Field(100, gt=0)
    max_group_recipients: int = Field(10_000, gt=0)
    idempotency_ttl: float = Field(86_400.0, gt=0)

    http_timeout: float = Field(30.0, gt=0)
    egress_deny: str = "169.254.0.0/16,fe80::/10"
    egress_allow: str = ""
    egress_ports: str = ""
    """Comma-separated ports SMTP may connect to; empty: any. (Provider APIs: any port.)"""

    hostname: str | None = Field(None, min_length=1, max_length=253, pattern=r"^\S+$")
    """The EHLO name of SMTP profiles that set no `name`. Default: this machine's name when
    it is a real (dotted, not localhost) one, else the connection's address literal."""
    allow_local_domains: bool = False
    """Accept sender and recipient addresses at local domains: `.local`, `.lan`, `localhost`,
    single-label names (an Active Directory `corp`, `root@localhost`). Off: they are a 422."""

    auth_cache_seconds: float = Field(60.0, ge=0)
    login_failures_per_minute: int = Field(10, ge=1)
    """Failed logins per client address per minute before 429."""
    account_lockout_failures: int = Field(100, ge=1)
    """Consecutive failed logins for one user name before that account is locked."""
    account_lockout_seconds: float = Field(900.0, gt=0)
    """How long a locked account answers 429 (credentials it accepted before still work)."""
    test_sends_per_minute: int = Field(5, ge=1)
    send_rate_per_minute: int = Field(0, ge=0)
    """Per-user limit on POST /messages; 0 is no limit."""

    console_trust_forwarded_proto: bool = False
    """Believe X-Forwarded-Proto: https (a TLS-terminating proxy in front) and mark the console's
    cookie Secure; off, only a request that reached Postroom over TLS gets a Secure cookie."""
    soft_bounce_limit: int = Field(3, ge=0)
    """Soft bounces of one address within POSTROOM_SOFT_BOUNCE_DAYS that suppress it; 0: never."""
    soft_bounce_days: float = Field(7.0, gt=0)
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    """Where recipients reach this service (https://mail.example.com): the base of the signed
    one-click unsubscribe links (List-Unsubscribe), which cannot be turned on without it."""

    dns_servers: str = ""
    """Comma-separated DNS resolvers for the DKIM record checks (`192.0.2.53`, `192.0.2.53:5353`,
    `[2001:db8::53]:53`); empty: the system's (/etc/resolv.conf)."""

    admin_user: str = "admin"
    """Name of the admin created on first start when there is no user."""
    admin_password: str = ""
    """That admin's password; empty: generate one and print it once."""
    migrate_on_start: bool = True
    """Upgrade the schema at start-up; with several replicas turn it off, run `postroom migrate`."""
    log_level: str = "INFO"

    bounce_port: int | None = Field(None, ge=1, le=65535)
    """Run the bounce listener (an SMTP server taking DSN and ARF reports) on this port in
    `postroom serve`; unset: off."""
    bounce_host: str = "127.0.0.1"
    """Where the bounce listener binds: only the MTA that forwards bounces should reach it."""
    bounce_imap_host: str | None = None
    """Poll this IMAP server's mailbox for bounce reports (relays such as Microsoft 365 deliver
    them to a mailbox); unset: off."""
    bounce_imap_port: int = Field(993, ge=1, le=65535)
    bounce_imap_security: Literal["tls", "starttls", "none"] = "tls"
    bounce_imap_user: str = ""
    bounce_imap_password: str = ""
    bounce_imap_folder: str = "INBOX"
    bounce_imap_done_folder: str = ""
    """Move each processed message there; empty: leave it, flagged \\Seen."""
    bounce_graph_poll: bool = False
    """Run the Microsoft Graph bounce poll in this process: it reads the Inbox of every msgraph
    profile that sets `pollBounces` (one process is enough; more only read the same twice)."""
    bounce_poll_interval: float = Field(60.0, gt=0)
    """Seconds between two polls of a bounce mailbox (IMAP, and Microsoft Graph profiles that set
    `pollBounces`)."""

    @field_validator("dns_servers")
    @classmethod
    def _resolvers(cls, value: str) -> str:
        for entry in value.split(","):
            if entry.strip():
                resolver_address(entry.strip())
        return value

    @property
    def resolvers(self) -> list[tuple[str, int]]:
        """POSTROOM_DNS_SERVERS as (address, port) pairs."""
        return [resolver_address(e.strip()) for e in self.dns_servers.split(",") if e.strip()]

    submission_host: str = "127.0.0.1"
    """Where the SMTP submission listener binds (0.0.0.0: every interface)."""
    submission_tls_cert: Path | None = None
    """PEM certificate chain the submission listener offers with STARTTLS (with
    POSTROOM_SUBMISSION_TLS_KEY); read at start-up."""
    submission_tls_key: Path | None = None
    submission_insecure_auth: bool = False
    """Offer AUTH on a submission listener without TLS: passwords then cross the network in
    clear, so only for a listener that nothing but this host reaches."""
    submission_max_message_bytes: int = Field(10_240_000, gt=0)
    """The largest message the submission listener takes (advertised with SIZE); larger: 552."""
    submission_port: int | None = Field(None, ge=1, le=65535)
    """Run the SMTP submission listener (RFC 6409, STARTTLS and AUTH) on this port in
    `postroom serve`; unset: off. Needs a certificate, or POSTROOM_SUBMISSION_INSECURE_AUTH."""

    @field_validator("submission_port")
    @classmethod
    def _submission_tls(cls, port: int | None, info: ValidationInfo) -> int | None:
        """AUTH carries a password, so the listener does not start without TLS unless told to
        (declared after the settings it reads, which are validated first)."""
        if port is None:
            return port
        cert, key = info.data.get("submission_tls_cert"), info.data.get("submission_tls_key")
        if (cert is None) != (key is None):
            raise ValueError("POSTROOM_SUBMISSION_TLS_CERT and _TLS_KEY go together")
        if cert is None and not info.data.get("submission_insecure_auth"):
            raise ValueError(
                "the submission listener needs POSTROOM_SUBMISSION_TLS_CERT and _TLS_KEY (for "
                "STARTTLS), or POSTROOM_SUBMISSION_INSECURE_AUTH=true to take passwords in clear"
            )
        return port

    @property
    def url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'postroom.db').as_posix()}"

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"


def resolver_address(entry: str) -> tuple[str, int]:
    """`192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53` or `[2001:db8::53]:5353` as (address,
    port); raises ValueError."""
    host, port = entry, "53"
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError as err:
        raise ValueError(f"{entry!r} is not a resolver's address (IP or IP:port)") from err
    if not 1 <= number <= 65535:
        raise ValueError(f"{entry!r}: the port must be 1 to 65535")
    return host, number
