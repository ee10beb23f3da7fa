"""URL lists are filtered before img2dataset sees them: nothing inside the cluster gets fetched.

A URL list is user input. Without a check, a row like ``http://169.254.169.254/latest/meta-data/`` or
``http://10.0.0.7:8265/api/jobs/`` makes the downloader fetch a cloud metadata endpoint or an internal
service and store the answer in a shard. Every URL must therefore be ``http``/``https`` and every
address its host resolves to must be globally routable; loopback, private (RFC 1918, fc00::/7),
carrier-grade NAT, link-local (cloud metadata: 169.254.169.254, fe80::/10), multicast, unspecified and
reserved/documentation addresses are refused. Refused rows are not dropped: ``filter_url_list`` returns
them with the reason, and the download writes them as ``download_error`` rows (status ``url_refused``).

``allow_private=True`` admits loopback and private ranges (never link-local, multicast or reserved), for
users who host their own corpus on an internal server (and for tests with a loopback server). It is an
operator's choice, not a flow parameter: ``grain annotate --allow-private-urls`` or the worker's
environment ``GRAIN_URL_ALLOW_PRIVATE=1``.

Limits (documented in docs/reliability.md): the check resolves each host once, before the download;
img2dataset resolves again when it fetches (a DNS answer that changes in between, "DNS rebinding",
is not caught) and follows HTTP redirects, which this pre-filter cannot see.
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
# What allow_private admits besides loopback: RFC 1918, IPv6 unique-local, carrier-grade NAT.
PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                       "100.64.0.0/10", "fc00::/7"))
_LEGACY_V4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")  # 2130706433, 0x7f.1, 127.1

Resolver = Callable[[str], Iterable[str]]


def allow_private_from_env(environ=None) -> bool:
    return (os.environ if environ is None else environ).get(ALLOW_PRIVATE_ENV, "") == "1"


def system_resolve(host: str) -> list[str]:
    """Every address ``host`` resolves to (getaddrinfo, TCP); raises OSError when it does not resolve."""
    return sorted({info[4][0].split("%", 1)[0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def _address_kind(addr: str, allow_private: bool = False) -> tuple[str, str | None]:
    """(the address, normalised; what forbids fetching it, e.g. "a loopback address", or None)."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 is 127.0.0.1
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        kind = "the unspecified address"
    elif ip.is_multicast:
        kind = "a multicast address"
    elif ip.is_link_local:
        kind = "a link-local address (cloud metadata endpoints live there)"
    elif ip.is_loopback:
        kind = None if allow_private else "a loopback address"
    elif any(ip in net for net in PRIVATE_NETS if net.version == ip.version):
        kind = None if allow_private else "a private address"
    elif not ip.is_global or ip.is_reserved:
        kind = "a reserved / non-routable address"
    else:
        kind = None
    return str(ip), kind


def address_refusal(addr: str, allow_private: bool = False) -> str | None:
    """Why ``addr`` (an IP address string) must not be fetched, or None when it may be."""
    ip, kind = _address_kind(addr, allow_private)
    return f"{ip} is {kind}" if kind else None


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
