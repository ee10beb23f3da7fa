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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(os.path.join(img2dataset_env.env_dir(), "bin", "img2dataset")),
                       reason="img2dataset environment missing: run infra/img2dataset_env.sh"),
]


class _Quiet(SimpleHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.seen.append(self.path)
        super().do_GET()

    def log_message(self, *a):
        pass


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
    url_list = tmp_path / "cc12m.tsv"
    url_list.write_text("url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c in urls))
    try:
        tars = img2dataset_env.download_url_list(str(url_list), str(tmp_path / "shards"), threads=2, timeout=5,
                                                 allow_private=True)
    finally:
        server.shutdown()
        server.server_close()
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
    assert set(_Quiet.seen) == {f"/img{i}.jpg" for i in range(3)} | {"/missing.jpg", "/notes.jpg"}  # no refused URL
