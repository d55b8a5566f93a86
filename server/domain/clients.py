"""Who is asking: the client address that the failed-login limits count.

The address is the TCP peer's, unless the peer is a trusted proxy: then it is
the one the proxies name in X-Forwarded-For or Forwarded (RFC 7239), read from
the right, skipping the proxies' own addresses. Entries further left were
written by the client and are never believed. The gateway and the gRPC server
apply the same rule (the server to call metadata of the same names).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The metadata by which a proxy (our gateway among them) names the client.
FORWARDED_FOR_METADATA = "x-forwarded-for"
FORWARDED_METADATA = "forwarded"
#: The metadata by which the gateway of `serve` proves it runs in the server's
#: process, so that the server believes its client address without trusting
#: every local process on loopback.
IN_PROCESS_GATEWAY_METADATA = "x-in-process-gateway"
#: IPv6 clients are counted per /64, the usual assignment to one customer.
IPV6_PREFIX = 64


@dataclass(frozen=True)
class TrustedProxies:
    """The networks whose peers may name the client's address; none by default."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """ "CIDR,CIDR,..." (a bare address is a /32 or /128); "" trusts no one."""
        networks = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"trusted proxies: {item!r} is not a CIDR range") from None
        return cls(tuple(networks))

    def __str__(self) -> str:
        return ",".join(map(str, self.networks))

    def trusts(self, address: str) -> bool:
        parsed = parse_address(address)
        return parsed is not None and any(parsed in network for network in self.networks)

    def client_address(
        self,
        peer: str,
        forwarded_for: Sequence[str] = (),
        forwarded: Sequence[str] = (),
        *,
        peer_trusted: bool = False,
    ) -> str:
        """The client's address for a request from `peer` carrying these header
        values (every line of each). Headers from an untrusted peer are ignored;
        if a request carries both headers and they disagree, one of them was
        passed through from the client unchecked, so neither is believed."""
        peer = normalized(peer)
        if not (peer_trusted or self.trusts(peer)):
            return peer
        candidates = {
            self._rightmost_untrusted(peer, chain)
            for chain in (_forwarded_for_chain(forwarded_for), _forwarded_chain(forwarded))
            if chain
        }
        return candidates.pop() if len(candidates) == 1 else peer

    def _rightmost_untrusted(self, peer: str, chain: list[str]) -> str:
        """Walks from the right: the first address no trusted proxy wrote. An entry
        that is not an address ("unknown", a hidden name) ends the walk: the proxy
        that wrote it is the client, as far as we can tell."""
        writer = peer
        for entry in reversed(chain):
            address = normalized(entry)
            if parse_address(address) is None:
                return writer
            if not self.trusts(address):
                return address
            writer = address
        return writer  # every hop is a proxy: the left-most is the client


#: The default: every peer is its own client.
NO_PROXIES = TrustedProxies()


def normalized(address: str) -> str:
    """An address in its canonical form ("::ffff:10.0.0.1" is 10.0.0.1; a port,
    brackets and quotes are dropped); the text unchanged if it is no address."""
    parsed = parse_address(address)
    return str(parsed) if parsed is not None else address.strip()


def parse_address(text: str) -> IPAddress | None:
    """An IP address, as proxies write them: bare, "[v6]", "[v6]:port", "v4:port"."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def limited_as(address: str) -> str:
    """What the per-address limits count: the address, or an IPv6 address's /64,
    since a customer's network can use any of its 2^64 addresses."""
    parsed = parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False))
    return address


def _forwarded_for_chain(values: Sequence[str]) -> list[str]:
    return [entry.strip() for value in values for entry in value.split(",")]


def _forwarded_chain(values: Sequence[str]) -> list[str]:
    """The for= of each element of RFC 7239 Forwarded; an element without one is
    an unknown hop."""
    chain = []
    for element in (entry for value in values for entry in value.split(",")):
        pairs = (pair.partition("=") for pair in element.split(";"))
        found = [value for name, _, value in pairs if name.strip().lower() == "for"]
        chain.append(found[0] if found else "unknown")
    return chain
