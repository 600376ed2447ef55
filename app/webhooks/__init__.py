"""Signed webhooks out: endpoints, the delivery queue on the outbox machinery, the sender loop."""
