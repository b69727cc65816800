"""Who is asking, and how much training they have had: the address every fair share is keyed on.

A Gradio session id is chosen by the client, so limits keyed on it are no limits: one script can open as
many sessions as it likes. Limits are keyed on the client's address instead. Behind reverse proxies (a
Hugging Face Space has one), every request comes from the nearest proxy, and each trusted proxy appends the
address it saw to `X-Forwarded-For`: with `proxy_hops` trusted proxies, the client is the `proxy_hops`-th entry
from the right; entries further left are whatever the client sent and are never trusted. With no proxy
(`proxy_hops` 0) the header is the client's own words and is ignored. An IPv6 address is keyed by its /64, the
block one subscriber gets: otherwise one visitor could be endless "clients".
"""

from __future__ import annotations

import ipaddress
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HOUR_S = 3600.0
IPV6_PREFIX = 64  # one subscriber's block


def client_address(host: str | None, headers: Mapping[str, str], proxy_hops: int) -> str:
    """The key limits use: the address the outermost trusted proxy saw (`proxy_hops` from the right of
    `X-Forwarded-For`), else the peer; an IPv6 address as its /64."""
    address = host or "unknown"
    if proxy_hops > 0:
        forwarded = [part.strip() for part in headers.get("x-forwarded-for", "").split(",") if part.strip()]
        if len(forwarded) >= proxy_hops:
            address = forwarded[-proxy_hops]
        elif forwarded:  # fewer entries than trusted proxies: the leftmost is still one a proxy wrote
            address = forwarded[0]
    return address_key(address)


def address_key(address: str) -> str:
    """An IPv4 address as it is, an IPv6 one as its /64 network, anything else (a name) as given."""
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if parsed.version == 4:
        return str(parsed)
    if parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.ip_network(f"{parsed}/{IPV6_PREFIX}", strict=False))


def request_address(request: Any, proxy_hops: int) -> str:
    """`client_address` of a Gradio or Starlette request (its peer and headers)."""
    return client_address(request.client.host if request.client else None, request.headers, proxy_hops)


@dataclass
class Charge:
    """One job's entry in its client's training budget: when it started and the seconds charged."""

    when: float
    seconds: float


class TrainingBudget:
    """Seconds of training each client had in the last hour: a job is charged its whole budget when it starts,
    and what it did not use is given back when it ends."""

    def __init__(self, seconds_per_hour: float):
        self.seconds_per_hour = seconds_per_hour
        self.charges: dict[str, list[Charge]] = defaultdict(list)

    def used(self, client: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        charges = [c for c in self.charges.get(client, []) if now - c.when < HOUR_S]
        if charges:
            self.charges[client] = charges
        else:
            self.charges.pop(client, None)
        return sum(charge.seconds for charge in charges)

    def refusal(self, client: str, seconds: float, now: float | None = None) -> str | None:
        """Why `client` may not train `seconds` more now, in one line with when to come back; None if it may."""
        now = time.monotonic() if now is None else now
        used = self.used(client, now)
        if used + seconds <= self.seconds_per_hour:
            return None
        left = self.seconds_per_hour - used
        frees, freed = now, 0.0  # when enough of the hour's charges expire
        for charge in sorted(self.charges.get(client, []), key=lambda c: c.when):
            frees, freed = charge.when + HOUR_S, freed + charge.seconds
            if left + freed >= seconds:
                break
        wait = max(1, round((frees - now) / 60))
        smaller = f"; a budget of at most {left:.0f} s fits now" if left >= 1 else ""
        return (f"you have trained {used:.0f} s of the {self.seconds_per_hour:.0f} s each visitor may train per hour "
                f"on this server: {seconds:g} s more fits in about {wait} minute{'s' if wait != 1 else ''}{smaller}")

    def charge(self, client: str, seconds: float) -> Charge:
        """Charge `seconds` now; returns the charge, whose seconds `settle` lowers to what the job used."""
        now = time.monotonic()
        for known in list(self.charges):  # an hour-old charge is forgotten, so this never grows with visitors
            self.used(known, now)
        entry = Charge(now, seconds)
        self.charges[client].append(entry)
        return entry

    @staticmethod
    def settle(charge: Charge, used: float) -> None:
        charge.seconds = min(charge.seconds, max(0.0, used))
