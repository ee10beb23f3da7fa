"""Static file server for artifact images (Prefect artifacts hold markdown, not image bytes).

    python -m infra.artifact_server --dir DIR --port PORT

Binds 127.0.0.1 only, serves ``DIR`` read-only (GET/HEAD), no directory listings, and adds
``Access-Control-Allow-Origin: *`` so the Prefect UI (another port) can embed the PNGs.
"""

from __future__ import annotations

import argparse
import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class ArtifactHandler(SimpleHTTPRequestHandler):
    def list_directory(self, path):  # no listings: only the files artifacts link to are served
        self.send_error(404, "no directory listings")
        return None

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args):  # one short line per request in the stack's log
        print(f"{self.address_string()} {fmt % args}", flush=True)


def serve(directory: str, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A server object (not yet serving) for ``directory`` on host:port."""
    handler = functools.partial(ArtifactHandler, directory=directory)
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.artifact_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="folder to serve")
    p.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = p.parse_args(argv)
    server = serve(args.dir, args.port)
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
