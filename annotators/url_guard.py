"""URL lists are filtered before img2dataset sees them: nothing inside the cluster gets fetched.

A URL list is user input. Without a check, a row like ``http://169.254.169.254/latest/meta-data/`` or
``http://10.0.0.7:8265/api/jobs/`` makes the downloader fetch a cloud metadata endpoint or an internal
service and store the answer in a shard. Every URL must therefore be ``http``/``https`` with a host that is
not percent-encoded, and every address its host resolves to must be globally routable. The special ranges
are an explicit table (``SPECIAL_RANGES``, from IANA's special-purpose registries) rather than the
interpreter's ``ipaddress`` flags: loopback, private (RFC 1918, fc00::/7), carrier-grade NAT, link-local
(cloud metadata: 169.254.169.254, fe80::/10), site-local, multicast, unspecified, the transition forms
(6to4 2002::/16 and its relay anycast 192.88.99.0/24, Teredo, IPv4-compatible) and reserved /
documentation ranges are refused; IPv4-mapped and NAT64 addresses are judged by the IPv4 address they
embed; in IPv6 only 2000::/3 is global. Refused rows are not dropped: ``filter_url_list`` returns
them with the reason, and the download writes them as ``download_error`` rows (status ``url_refused``).

``allow_private=True`` admits loopback and private ranges (never link-local, multicast or reserved), for
users who host their own corpus on an internal server (and for tests with a loopback server). It is an
operator's choice, not a flow parameter: ``grain annotate --allow-private-urls`` or the worker's
environment ``GRAIN_URL_ALLOW_PRIVATE=1``.

Redirects: img2dataset follows them itself; annotators/fetch_guard.py judges every ``Location`` by these
rules inside img2dataset's processes. Limit (docs/reliability.md): the check resolves each host once, before
the download; img2dataset resolves again when it fetches, so a DNS answer that changes in between ("DNS
rebinding") is not caught.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

ALLOW_PRIVATE_ENV = "GRAIN_URL_ALLOW_PRIVATE"
REFUSED_STATUS = "url_refused"  # img2dataset-style listing status of a refused row
SCHEMES = ("http", "https")
# The special-purpose ranges, as an explicit table (IANA's IPv4 and IPv6 special-purpose registries), so the
# verdict does not depend on the interpreter's ``ipaddress`` tables. (network, kind, admitted by allow_private).
# Anything else in IPv4 is global; in IPv6 only 2000::/3 is global unicast, the rest is reserved.
RESERVED = "a reserved / non-routable address"
SPECIAL_RANGES = tuple((ipaddress.ip_network(n), kind, ok) for n, kind, ok in (
    ("0.0.0.0/8", RESERVED + " ('this network': 0.x.x.x reaches the local host)", False),
    ("10.0.0.0/8", "a private address", True),
    ("100.64.0.0/10", "a private address (carrier-grade NAT)", True),
    ("127.0.0.0/8", "a loopback address", True),
    ("169.254.0.0/16", "a link-local address (cloud metadata endpoints live there)", False),
    ("172.16.0.0/12", "a private address", True),
    ("192.0.0.0/24", RESERVED + " (IETF protocol assignments)", False),
    ("192.0.2.0/24", RESERVED + " (documentation)", False),
    ("192.88.99.0/24", RESERVED + " (the 6to4 relay anycast range)", False),
    ("192.168.0.0/16", "a private address", True),
    ("198.18.0.0/15", RESERVED + " (benchmarking)", False),
    ("198.51.100.0/24", RESERVED + " (documentation)", False),
    ("203.0.113.0/24", RESERVED + " (documentation)", False),
    ("224.0.0.0/4", "a multicast address", False),
    ("240.0.0.0/4", RESERVED + " (future use and broadcast)", False),
    ("::1/128", "a loopback address", True),
    ("::/96", RESERVED + " (IPv4-compatible, deprecated)", False),
    ("64:ff9b:1::/48", RESERVED + " (local-use NAT64)", False),
    ("100::/64", RESERVED + " (discard-only)", False),
    ("2001::/32", RESERVED + " (Teredo transition tunnel)", False),
    ("2001::/23", RESERVED + " (IETF protocol assignments)", False),
    ("2001:db8::/32", RESERVED + " (documentation)", False),
    ("2002::/16", RESERVED + " (6to4 transition tunnel)", False),
    ("3fff::/20", RESERVED + " (documentation)", False),
    ("5f00::/16", RESERVED + " (segment routing)", False),
    ("fc00::/7", "a private address (unique local)", True),
    ("fe80::/10", "a link-local address (cloud metadata endpoints live there)", False),
    ("fec0::/10", RESERVED + " (site-local, deprecated)", False),
    ("ff00::/8", "a multicast address", False),
))
GLOBAL_V6 = ipaddress.ip_network("2000::/3")
# IPv6 forms that carry an IPv4 address the connection reaches: judged by that address.
EMBEDDING_V6 = (ipaddress.ip_network("::ffff:0:0/96"), ipaddress.ip_network("64:ff9b::/96"))
_LEGACY_V4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")  # 2130706433, 0x7f.1, 127.1

Resolver = Callable[[str], Iterable[str]]


def allow_private_from_env(environ=None) -> bool:
    return (os.environ if environ is None else environ).get(ALLOW_PRIVATE_ENV, "") == "1"


def system_resolve(host: str) -> list[str]:
    """Every address ``host`` resolves to (getaddrinfo, TCP); raises OSError when it does not resolve."""
    return sorted({info[4][0].split("%", 1)[0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def _address_kind(addr: str, allow_private: bool = False) -> tuple[str, str | None]:
    """(the address, normalised; what forbids fetching it, e.g. "a loopback address", or None). IPv4-mapped
    and NAT64 addresses are judged (and named) by the IPv4 address they embed; the most specific range wins."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 6 and any(ip in net for net in EMBEDDING_V6):
        ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) == 0:
        return str(ip), "the unspecified address"
    if ip.version == 6 and int(ip) >> 112 == 0x2002:  # 6to4: 2002:AABB:CCDD::/48 wraps AA.BB.CC.DD
        return str(ip), f"{RESERVED} (6to4 transition tunnel, wrapping {ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)})"
    matches = [(net, kind, ok) for net, kind, ok in SPECIAL_RANGES if net.version == ip.version and ip in net]
    if matches:
        _, kind, ok = max(matches, key=lambda m: m[0].prefixlen)
        return str(ip), None if (ok and allow_private) else kind
    if ip.version == 6 and ip not in GLOBAL_V6:
        return str(ip), RESERVED + " (outside global unicast 2000::/3)"
    return str(ip), None


def _literal_ip(host: str) -> str | None:
    """``host`` as an IP address string if it is one, including legacy IPv4 forms (no resolver call)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _LEGACY_V4.match(host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))  # what the fetcher's resolver would make of it
        except OSError:
            return None
    return None


def _host_of(url: str) -> tuple[str | None, str | None]:
    """(host, None) for a well-formed http(s) URL, else (None, reason)."""
    if not isinstance(url, str) or not url.strip():
        return None, "empty URL"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        return None, f"malformed URL ({e})"
    if parts.scheme.lower() not in SCHEMES:
        return None, f"scheme {parts.scheme or '(none)'!r} is not http/https"
    if not parts.hostname:
        return None, "no host in URL"
    if "%" in parts.hostname:  # urllib would decode "%31%32%37.0.0.1" to 127.0.0.1 before connecting
        return None, f"percent-encoded host {parts.hostname!r} (refused: the fetcher would decode it)"
    return parts.hostname.lower().rstrip("."), None


def host_refusal(host: str, allow_private: bool = False, resolve: Resolver = system_resolve) -> str | None:
    """Why URLs on ``host`` must not be fetched (first refused address), or None."""
    literal = _literal_ip(host)
    if literal is not None:
        addrs = [literal]
    else:
        try:
            addrs = list(resolve(host))
        except (OSError, UnicodeError) as e:
            return f"host {host!r} does not resolve ({e})"
        if not addrs:
            return f"host {host!r} does not resolve"
    for addr in addrs:
        try:
            ip, kind = _address_kind(addr, allow_private)
        except ValueError:
            return f"host {host!r} resolved to a non-address {addr!r}"
        if kind:
            return f"{ip} is {kind}" if literal is not None else f"host {host!r} resolves to {ip}, {kind}"
    return None


def url_refusal(url: str, allow_private: bool = False, resolve: Resolver = system_resolve) -> str | None:
    """Why ``url`` must not be fetched, or None. Refuses before any connection is made."""
    host, reason = _host_of(url)
    return reason or host_refusal(host, allow_private, resolve)


def check_urls(urls: list, allow_private: bool = False, resolve: Resolver = system_resolve,
               threads: int = 16) -> list[str | None]:
    """``url_refusal`` for each URL (same order); each distinct host is resolved once, in parallel."""
    hosts, reasons = [], []
    for u in urls:
        h, r = _host_of(u)
        hosts.append(h)
        reasons.append(r)
    distinct = sorted({h for h in hosts if h is not None})
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(distinct) or 1))) as pool:
        by_host = dict(zip(distinct, pool.map(lambda h: host_refusal(h, allow_private, resolve), distinct)))
    return [r if h is None else by_host[h] for h, r in zip(hosts, reasons)]
