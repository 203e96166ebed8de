"""The one request signature Luna uses when she calls the app: BotSession requests and webhooks.

``X-Luna-Signature: t=<unix seconds>,v1=<hex>,v2=<hex>`` where ``v2 = HMAC-SHA256(secret, "<t>.<METHOD>.<path>."
+ raw body)`` (a signed body cannot be replayed to another route) and ``v1 = HMAC-SHA256(secret, "<t>." + raw
body)`` for apps still on BotSession contract version 1. The app verifies both kinds of request with the same
code: recompute over the raw bytes, compare in constant time, and refuse a ``t`` more than ``TOLERANCE_S`` from
its clock, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Luna-Signature"
TOLERANCE_S = 300


def signature(secret: bytes, ts: str, method: str, path: str, body: bytes) -> str:
    """The header value: ``v2`` signs method, path (with query), timestamp and body, so a signed body cannot be
    replayed to the other route; ``v1`` (timestamp and body only) is kept for apps still on contract version 1."""
    v1 = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    v2 = hmac.new(secret, f"{ts}.{method.upper()}.{path}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={v1},v2={v2}"


def verify(secret: bytes, header: str, method: str, path: str, body: bytes, now: float) -> bool:
    """The receiver's side: True if ``header`` signs this request (``v2``) and is fresh."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t, v2 = parts.get("t", ""), parts.get("v2", "")
    if not t.isdigit() or abs(now - int(t)) > TOLERANCE_S:
        return False
    expected = dict(p.split("=", 1) for p in signature(secret, t, method, path, body).split(","))["v2"]
    return hmac.compare_digest(expected, v2)
