"""Retention: what Postroom keeps, and for how long (the purge that forgets the rest)."""
