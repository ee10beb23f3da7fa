"""Static file server for artifact images (Prefect artifacts hold markdown, not image bytes).

    python -m infra.artifact_server --dir DIR --port PORT

Binds 127.0.0.1 only, serves ``DIR`` read-only (GET/HEAD), no directory listings. Cross-origin reads
are allowed for one origin only, the Prefect UI's (``Access-Control-Allow-Origin: <ui origin>``): by
default the local stack's UI (``infra/stack_config.py``: ``http://127.0.0.1:$GRAIN_PREFECT_PORT``),
else ``$GRAIN_ARTIFACT_ALLOW_ORIGIN`` or ``--allow-origin``. Other web pages open in the same browser
cannot read the files with script (``<img>`` embedding needs no CORS at all).
"""

from __future__ import annotations

import argparse
import functools
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ALLOW_ORIGIN_ENV = "GRAIN_ARTIFACT_ALLOW_ORIGIN"


def default_origin() -> str:
    """The Prefect UI's origin: ``$GRAIN_ARTIFACT_ALLOW_ORIGIN``, else the local stack's UI URL."""
    if os.environ.get(ALLOW_ORIGIN_ENV):
        return os.environ[ALLOW_ORIGIN_ENV]
    from infra.stack_config import StackConfig

    return StackConfig.from_env().ui_url


def check_origin(origin: str) -> str:
    """``scheme://host[:port]`` exactly (no path, no wildcard); ValueError naming the value otherwise."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or "*" in origin:
        raise ValueError(f"artifact server: allowed origin {origin!r} must be one http(s)://host[:port], no wildcard")
    return f"{parts.scheme}://{parts.netloc}"


class ArtifactHandler(SimpleHTTPRequestHandler):
    allow_origin = ""  # set per server by serve()

    def list_directory(self, path):  # no listings: only the files artifacts link to are served
        self.send_error(404, "no directory listings")
        return None

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", self.allow_origin)  # the Prefect UI only
        self.send_header("Vary", "Origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args):  # one short line per request in the stack's log
        print(f"{self.address_string()} {fmt % args}", flush=True)


def serve(directory: str, port: int, host: str = "127.0.0.1", allow_origin: str | None = None) -> ThreadingHTTPServer:
    """A server object (not yet serving) for ``directory`` on host:port; CORS for ``allow_origin`` only
    (default: :func:`default_origin`)."""
    origin = check_origin(allow_origin or default_origin())
    handler = functools.partial(type("Handler", (ArtifactHandler,), {"allow_origin": origin}), directory=directory)
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.artifact_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="folder to serve")
    p.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    p.add_argument("--allow-origin", help="the Prefect UI's origin (default: $GRAIN_ARTIFACT_ALLOW_ORIGIN, "
                                          "else the local stack's UI, http://127.0.0.1:$GRAIN_PREFECT_PORT)")
    args = p.parse_args(argv)
    server = serve(args.dir, args.port, allow_origin=args.allow_origin)
    print(f"serving {args.dir} on http://127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
