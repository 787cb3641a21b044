"""Booking backends: the interface in `base`, YClients in `yclients` (import it where it is wired in)."""
