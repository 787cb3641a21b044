"""HMAC-SHA256 request signatures (Meta's X-Hub-Signature-256 and the gateway's X-Signature)."""

from __future__ import annotations

import hashlib
import hmac

from system.errors import AIAdminError


class SignatureError(AIAdminError):
    """A missing (401) or wrong (403) signature."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def sign(raw: bytes, secret: str) -> str:
    """The header value for `raw`: `sha256=<hex>`."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def verify(raw: bytes, header_value: str | None, secret: str, *, header: str) -> None:
    """Check the signature of the raw body in constant time; raise SignatureError when it fails."""
    if not header_value:
        raise SignatureError(401, f"{header} header is required")
    if not hmac.compare_digest(header_value.strip().lower().encode(), sign(raw, secret).encode()):
        raise SignatureError(403, f"{header} does not match the body")
