"""URL lists cannot make the downloader fetch loopback, private, link-local (metadata) or reserved addresses.

Everything here is fast and touches only 127.0.0.1: refused URLs are decided from the URL's literal
address or from an injected resolver, before any connection; a loopback HTTP server that counts
requests proves that nothing was fetched for them. (tests/infra/test_url_list_download.py runs the
real img2dataset download with accepted loopback URLs beside refused ones.)
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from annotators import img2dataset_env, url_guard


class CountingServer:
    """A loopback HTTP server that records the path of every request it gets."""

    def __init__(self):
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                hits.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting_server():
    s = CountingServer()
    yield s
    s.close()


def _no_resolver(host):
    raise AssertionError(f"the resolver was asked about {host!r}: literal addresses need no lookup")


FAKE_DNS = {"intranet.example": ["10.0.0.5"], "metadata.example": ["169.254.169.254"],
            "images.example": ["93.184.216.34"], "split.example": ["93.184.216.34", "192.168.1.9"],
            "rebind.example": ["::ffff:127.0.0.1"], "localhost": ["127.0.0.1", "::1"]}


def fake_resolve(host):
    if host not in FAKE_DNS:
        raise OSError(f"[Errno -2] Name or service not known: {host}")
    return FAKE_DNS[host]


@pytest.mark.parametrize("url,reason", [
    ("file:///etc/passwd", "scheme 'file' is not http/https"),
    ("ftp://93.184.216.34/x.jpg", "scheme 'ftp'"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme 'gopher'"),
    ("//93.184.216.34/x.jpg", "scheme '(none)'"),
    ("http:///x.jpg", "no host"),
    ("http://93.184.216.34:99999/x.jpg", "malformed URL"),
    ("", "empty URL"),
    ("http://127.0.0.1:8265/api/jobs/", "127.0.0.1 is a loopback address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://2130706433/", "127.0.0.1 is a loopback address"),  # decimal form of 127.0.0.1
    ("http://0x7f.1/", "127.0.0.1 is a loopback address"),
    ("http://10.1.2.3/x.jpg", "10.1.2.3 is a private address"),
    ("http://172.20.0.1/", "172.20.0.1 is a private address"),
    ("http://192.168.0.10/", "192.168.0.10 is a private address"),
    ("http://100.64.0.1/", "100.64.0.1 is a private address"),
    ("http://[fd00::1]/", "fd00::1 is a private address"),
    ("http://169.254.169.254/latest/meta-data/iam/", "169.254.169.254 is a link-local address"),
    ("http://[fe80::1]/", "fe80::1 is a link-local address"),
    ("http://[::ffff:169.254.169.254]/", "169.254.169.254 is a link-local address"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("http://0.0.0.0:8265/", "0.0.0.0 is the unspecified address"),
    ("http://192.0.2.1/", "192.0.2.1 is a reserved / non-routable"),
    ("http://240.0.0.1/", "240.0.0.1 is a reserved / non-routable"),
])
def test_literal_addresses_and_schemes_are_refused_without_a_lookup(url, reason):
    got = url_guard.url_refusal(url, resolve=_no_resolver)
    assert got is not None and reason in got, got


@pytest.mark.parametrize("url,reason", [
    ("http://intranet.example/a.jpg", "'intranet.example' resolves to 10.0.0.5, a private address"),
    ("https://metadata.example/latest", "resolves to 169.254.169.254, a link-local address"),
    ("http://split.example/a.jpg", "resolves to 192.168.1.9, a private address"),  # any bad address refuses
    ("http://rebind.example/a.jpg", "resolves to 127.0.0.1, a loopback address"),
    ("http://LOCALHOST./a.jpg", "'localhost' resolves to 127.0.0.1"),
    ("http://nowhere.example/a.jpg", "'nowhere.example' does not resolve"),
])
def test_hostnames_are_judged_by_every_address_they_resolve_to(url, reason):
    got = url_guard.url_refusal(url, resolve=fake_resolve)
    assert got is not None and reason in got, got


def test_public_addresses_pass_and_allow_private_admits_only_private_ranges():
    assert url_guard.url_refusal("https://images.example/cat.jpg", resolve=fake_resolve) is None
    assert url_guard.url_refusal("http://93.184.216.34/cat.jpg", resolve=_no_resolver) is None
    for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://intranet.example/x", "http://[fd00::1]/"):
        assert url_guard.url_refusal(url, allow_private=True, resolve=fake_resolve) is None, url
    for url in ("http://169.254.169.254/", "http://metadata.example/", "http://224.0.0.1/", "http://0.0.0.0/",
                "http://192.0.2.1/", "file:///etc/passwd"):
        assert url_guard.url_refusal(url, allow_private=True, resolve=fake_resolve), url


def test_check_urls_resolves_each_host_once_and_keeps_order():
    calls = []

    def resolve(host):
        calls.append(host)
        return fake_resolve(host)

    urls = ["http://images.example/1.jpg", "http://intranet.example/1.jpg", "http://images.example/2.jpg",
            "ftp://images.example/3.jpg", "http://127.0.0.1/4.jpg"]
    reasons = url_guard.check_urls(urls, resolve=resolve)
    assert [r is None for r in reasons] == [True, False, True, False, False]
    assert sorted(calls) == ["images.example", "intranet.example"]


def test_refused_urls_are_never_fetched_and_become_download_error_rows(counting_server, tmp_path, monkeypatch):
    """A URL list whose every row is refused: no request reaches the loopback server, img2dataset is not
    even started, and each row comes back from the reader as a download_error row with the reason."""
    from annotators.readers import discover_shards, read_shard

    monkeypatch.delenv(url_guard.ALLOW_PRIVATE_ENV, raising=False)
    monkeypatch.setattr(img2dataset_env, "ensure_env", lambda **k: pytest.fail("img2dataset was started"))
    port = counting_server.port
    urls = [f"http://127.0.0.1:{port}/loopback.jpg", f"http://localhost:{port}/localhost.jpg",
            f"http://0.0.0.0:{port}/unspecified.jpg", f"http://2130706433:{port}/decimal.jpg",
            f"http://[::ffff:127.0.0.1]:{port}/mapped.jpg", f"http://intranet.example:{port}/dns.jpg",
            "http://169.254.169.254/latest/meta-data/", "http://10.0.0.7:8265/api/jobs/", "file:///etc/passwd"]
    url_list = tmp_path / "urls.tsv"
    url_list.write_text("url\tcaption\n" + "".join(f"{u}\tcaption {i}\n" for i, u in enumerate(urls)))
    out = tmp_path / "shards"

    def resolve(host):  # the real resolver for localhost, the fake one for the made-up name
        return fake_resolve(host) if host.endswith(".example") else url_guard.system_resolve(host)

    tars = img2dataset_env.download_url_list(str(url_list), str(out), resolve=resolve, timeout=2)
    assert tars == []
    assert counting_server.hits == []  # nothing was fetched
    recs = [r for s in discover_shards([str(out)]) for r in read_shard(s)]
    by_url = {r["url"]: r for r in recs}
    assert set(by_url) == set(urls)  # every row accounted for
    for i, u in enumerate(urls):
        r = by_url[u]
        assert r["status"] == "download_error" and r["image"] is None and r["source_caption"] == f"caption {i}"
        assert r["error"].startswith("URL guard: url_refused: refused before download: "), r["error"]
    assert "is a loopback address" in by_url[urls[0]]["error"]
    assert "link-local address" in by_url["http://169.254.169.254/latest/meta-data/"]["error"]
    assert "scheme 'file'" in by_url["file:///etc/passwd"]["error"]
    # The same list with private ranges allowed still refuses the metadata/unspecified/file rows.
    accepted, refused = img2dataset_env.filter_url_list(str(url_list), allow_private=True, resolve=resolve)
    assert sorted(refused.column("url").to_pylist()) == sorted(
        [f"http://0.0.0.0:{port}/unspecified.jpg", "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"])
    assert accepted.num_rows == len(urls) - 3
    assert counting_server.hits == []
    # Control: the server does count what reaches it (so the empty list above means something).
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/control", timeout=5)
    assert counting_server.hits == ["/control"]


def test_annotate_cli_routes_url_lists_through_the_guard(counting_server, tmp_path, monkeypatch):
    from annotators.cli import build_parser, resolve_inputs

    monkeypatch.delenv(url_guard.ALLOW_PRIVATE_ENV, raising=False)
    monkeypatch.setattr(img2dataset_env, "ensure_env", lambda **k: pytest.fail("img2dataset was started"))
    args = build_parser().parse_args(["--input", "x.tsv", "--output", "o", "--allow-private-urls"])
    assert args.allow_private_urls is True
    url_list = tmp_path / "urls.csv"
    url_list.write_text(f"url,caption\nhttp://127.0.0.1:{counting_server.port}/a.jpg,a\n")
    shards = tmp_path / "shards"
    shards.mkdir()
    out = str(tmp_path / "annotated")
    assert resolve_inputs([str(shards), str(url_list)], out) == [str(shards), out + "-download"]
    assert (tmp_path / "annotated-download" / img2dataset_env.REFUSED_SHARD).exists()
    assert counting_server.hits == []
    with pytest.raises(ValueError, match="must be a local folder"):
        resolve_inputs([str(url_list)], "s3://bucket/out")


# Every special range by its own literal, against the guard's own table (not the interpreter's ipaddress flags).
@pytest.mark.parametrize("url,reason", [
    ("http://[2002:7f00:1::]/", "6to4 transition tunnel, wrapping 127.0.0.1"),
    ("http://[2002:a9fe:a9fe::]/", "6to4 transition tunnel, wrapping 169.254.169.254"),
    ("http://[2002:5db8:d822::]/", "6to4 transition tunnel, wrapping 93.184.216.34"),  # even a public one
    ("http://[fec0::1]/", "site-local"),
    ("http://192.88.99.1/", "6to4 relay anycast"),
    ("http://[2001::1]/", "Teredo"),
    ("http://[64:ff9b::a9fe:a9fe]/", "169.254.169.254 is a link-local address"),  # NAT64 wraps IPv4
    ("http://[64:ff9b:1::1]/", "local-use NAT64"),
    ("http://[::7f00:1]/", "IPv4-compatible"),
    ("http://[100::1]/", "discard-only"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[3fff::1]/", "documentation"),
    ("http://[4000::1]/", "outside global unicast"),
    ("http://[::]/", "the unspecified address"),
    ("http://0.1.2.3/", "'this network'"),
    ("http://192.0.0.8/", "IETF protocol assignments"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://198.51.100.7/", "documentation"),
    ("http://203.0.113.9/", "documentation"),
    ("http://255.255.255.255/", "future use and broadcast"),
    ("http://%31%32%37.0.0.1/", "percent-encoded host"),
    ("http://%6c%6f%63%61%6c%68%6f%73%74/", "percent-encoded host"),  # "localhost"
    ("http://[fe80::1%25eth0]/", "percent-encoded host"),
])
def test_transition_special_and_encoded_forms_are_refused(url, reason):
    for allow_private in (False, True):  # none of these is a private range an operator may allow
        got = url_guard.url_refusal(url, allow_private=allow_private, resolve=_no_resolver)
        assert got is not None and reason in got, got


def test_the_table_not_the_interpreter_decides(monkeypatch):
    """The verdicts hold with the interpreter's own special-range flags switched off."""
    import ipaddress

    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        for flag in ("is_private", "is_global", "is_reserved", "is_link_local", "is_loopback", "is_multicast",
                     "is_site_local", "is_unspecified"):
            if hasattr(cls, flag):
                monkeypatch.setattr(cls, flag, property(lambda self: pytest.fail("ipaddress flag consulted")))
    assert "link-local" in url_guard.url_refusal("http://169.254.169.254/", resolve=_no_resolver)
    assert "site-local" in url_guard.url_refusal("http://[fec0::1]/", resolve=_no_resolver)
    assert url_guard.url_refusal("http://93.184.216.34/", resolve=_no_resolver) is None
    assert url_guard.url_refusal("http://[2606:4700::1111]/", resolve=_no_resolver) is None


class RedirectingServer(CountingServer):
    """A loopback server answering every request with a 302 to ``location(path)``."""

    def __init__(self, location):
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                hits.append(self.path)
                self.send_response(302)
                self.send_header("Location", location(self.path))
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_redirects_are_judged_hop_by_hop(counting_server):
    """The redirect guard img2dataset runs under (annotators/fetch_guard.py): a 302 to 0.0.0.0 (refused even
    with private ranges allowed; it would reach the counting server on this host) is not followed, and the
    error names the guard; a 302 to an allowed loopback address is (the control)."""
    import urllib.error
    import urllib.request

    from annotators.fetch_guard import GuardedRedirectHandler

    target = counting_server.port
    hop = RedirectingServer(lambda path: f"http://{'0.0.0.0' if path == '/bad' else '127.0.0.1'}:{target}{path}")
    try:
        opener = urllib.request.build_opener(GuardedRedirectHandler(allow_private=True))
        with pytest.raises(urllib.error.HTTPError, match="refused by the URL guard: 0.0.0.0 is the unspecified"):
            opener.open(f"http://127.0.0.1:{hop.port}/bad", timeout=5)
        assert hop.hits == ["/bad"] and counting_server.hits == []
        with pytest.raises(urllib.error.HTTPError, match="404"):  # followed: the target answers 404
            opener.open(f"http://127.0.0.1:{hop.port}/ok", timeout=5)
        assert counting_server.hits == ["/ok"]
    finally:
        hop.close()
