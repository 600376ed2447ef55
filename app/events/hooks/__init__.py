"""POST /api/v1/hooks/{profile}/events: providers' delivery events in, verified by the provider's
own signature, matched to messages and recorded in one transaction before the 2xx."""
