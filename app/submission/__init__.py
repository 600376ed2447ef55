"""SMTP submission (RFC 6409): apps that only speak SMTP hand their mail to the same outbox as
POST /api/v1/messages, with the same checks (`postroom serve --submission-port 587`)."""
