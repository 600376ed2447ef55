"""Bounces from SMTP relays: VERP envelope senders, RFC 3464 DSN and RFC 5965 ARF parsing, and the
ways reports come in (`postroom ingest`, POST /api/v1/hooks/dsn, the bounce listener, the IMAP and
Microsoft Graph mailbox pollers), all ending in `service.ingest`."""
