"""A CC12M-style URL list through img2dataset (its own venv) against a loopback server, then the reader.

Dead links and non-images must stay accounted for: they end up as error rows, never dropped. The
loopback server stands for a corpus on the user's own network, so the download allows private ranges;
URLs the guard refuses even then (unspecified address, link-local metadata, non-http schemes) become
``download_error`` rows and the server sees no request for them (tests/reliability/test_url_guard.py
covers the refusals without img2dataset).
"""

import io
import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from annotators import img2dataset_env

pytestmark = pytest.mark.slow  # the environment is made by infra/setup.sh; without it the download fails here


class _Quiet(SimpleHTTPRequestHandler):
    seen: list = []
    redirects: dict = {}  # path → Location of a 302 answer

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.seen.append(self.path)
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *a):
        pass


class _Target(_Quiet):
    seen: list = []
    redirects: dict = {}


def test_url_list_download_keeps_every_url(tmp_path):
    from PIL import Image

    from annotators.readers import discover_shards, read_shard

    site = tmp_path / "site"
    site.mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        buf = io.BytesIO()
        Image.new("RGB", (64 + 8 * i, 48), colour).save(buf, format="JPEG")
        (site / f"img{i}.jpg").write_bytes(buf.getvalue())
    (site / "notes.jpg").write_text("this is not an image")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [(f"{base}/img{i}.jpg", f"a {c} square") for i, c in enumerate(["red", "green", "blue"])]
    urls += [(f"{base}/missing.jpg", "a dead link"), (f"{base}/notes.jpg", "not an image")]
    port = server.server_address[1]
    refused = [(f"http://0.0.0.0:{port}/unspecified.jpg", "0.0.0.0 reaches this host"),
               (f"ftp://127.0.0.1:{port}/ftp.jpg", "not http"),
               ("http://169.254.169.254/latest/meta-data/", "cloud metadata")]
    urls += refused
    # Redirects, followed by img2dataset itself: one to an address the guard refuses even with private ranges
    # allowed (0.0.0.0 reaches this host, so a second loopback server would see the request if the hop were not
    # checked), one to an allowed address of that server (the control: redirects are followed).
    target = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Target, directory=str(site)))
    threading.Thread(target=target.serve_forever, daemon=True).start()
    t_port = target.server_address[1]
    _Quiet.redirects = {"/to-unspecified.jpg": f"http://0.0.0.0:{t_port}/img0.jpg",
                        "/to-allowed.jpg": f"http://127.0.0.1:{t_port}/img1.jpg"}
    urls += [(f"{base}/to-unspecified.jpg", "redirected to 0.0.0.0"), (f"{base}/to-allowed.jpg", "redirected")]
    url_list = tmp_path / "cc12m.tsv"
    url_list.write_text("url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c in urls))
    try:
        tars = img2dataset_env.download_url_list(str(url_list), str(tmp_path / "shards"), threads=2, timeout=5,
                                                 allow_private=True)
    finally:
        for s in (server, target):
            s.shutdown()
            s.server_close()
    assert tars and os.path.exists(tars[0][:-4] + "_stats.json")
    recs = [r for s in discover_shards([str(tmp_path / "shards")]) for r in read_shard(s)]
    by_url = {r["url"]: r for r in recs}
    assert set(by_url) == {u for u, _ in urls}  # every URL accounted for
    for i in range(3):
        ok = by_url[f"{base}/img{i}.jpg"]
        assert ok["status"] == "ok" and ok["source_caption"] == urls[i][1] and ok["image"]
    dead = by_url[f"{base}/missing.jpg"]
    assert dead["status"] == "download_error" and "404" in (dead["error"] or "")
    assert by_url[f"{base}/notes.jpg"]["status"] in ("download_error", "decode_error")
    for url, _ in refused:
        assert by_url[url]["status"] == "download_error" and by_url[url]["error"].startswith("URL guard: url_refused")
    assert set(_Quiet.seen) == {f"/img{i}.jpg" for i in range(3)} | {"/missing.jpg", "/notes.jpg",
                                                                      "/to-unspecified.jpg", "/to-allowed.jpg"}
    bad = by_url[f"{base}/to-unspecified.jpg"]
    assert bad["status"] == "download_error" and "refused by the URL guard" in bad["error"], bad["error"]
    assert by_url[f"{base}/to-allowed.jpg"]["status"] == "ok"  # the allowed hop was followed ...
    assert _Target.seen == ["/img1.jpg"]  # ... and the refused one never reached the target server
