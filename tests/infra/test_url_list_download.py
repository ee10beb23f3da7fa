"""A CC12M-style URL list through img2dataset (its own venv) against a loopback server, then the reader.

Dead links and non-images must stay accounted for: they end up as error rows, never dropped.
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
    url_list = tmp_path / "cc12m.tsv"
    url_list.write_text("url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c in urls))
    try:
        tars = img2dataset_env.download_url_list(str(url_list), str(tmp_path / "shards"), threads=2, timeout=5)
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
