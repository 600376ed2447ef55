"""Delivery events: what happened to a message after Postroom accepted it, per recipient, in one
closed vocabulary whatever reported it (Postroom's own attempts, a provider's webhook, a DSN)."""
