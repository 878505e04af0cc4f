"""The client's address behind reverse proxies (plain helper, no Django)."""

from __future__ import annotations


def client_address(*, remote_addr: str, forwarded_for: str | None, trusted_proxies: int) -> str:
    """With no trusted proxy, the connection's address: X-Forwarded-For is whatever the client wrote. Behind N
    proxies that each append the address they received from, the N-th entry from the right is the one the outermost
    proxy saw; entries further left were written by the client and are ignored (as DRF's NUM_PROXIES)."""
    if trusted_proxies <= 0 or not forwarded_for:
        return remote_addr
    addresses = [part.strip() for part in forwarded_for.split(",") if part.strip()]
    if not addresses:
        return remote_addr
    return addresses[-min(trusted_proxies, len(addresses))]
