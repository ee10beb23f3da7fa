"""Every redirect img2dataset follows is judged by the URL guard before it is fetched.

annotators/url_guard.py filters a URL list before img2dataset sees it, but img2dataset fetches with
``urllib.request.urlopen``, which follows HTTP redirects on its own: a public URL answering
``302 Location: http://169.254.169.254/...`` would be fetched. This module closes that. Its
``GuardedRedirectHandler`` checks every ``Location`` with ``url_guard.url_refusal`` (the same rules,
``GRAIN_URL_ALLOW_PRIVATE`` the same switch) and raises ``HTTPError`` instead of following a refused one, so
the row ends as a failed download with the reason. ``install()`` makes it urllib's global opener.

img2dataset downloads in spawned worker processes, so the handler is installed by a ``.pth`` file in
img2dataset's own environment (``annotators.img2dataset_env.install_fetch_guard``), which every interpreter
of that environment runs at start. The module and url_guard.py are copied there as ``grain_fetch_guard`` and
``grain_url_guard`` (both use the standard library only).

Not closed (docs/reliability.md): a DNS answer that changes between the check and the connection.
"""

from __future__ import annotations

import urllib.error
import urllib.request

try:
    from annotators import url_guard
except ImportError:  # inside img2dataset's environment: the copy beside this file
    import grain_url_guard as url_guard  # type: ignore[no-redef]


class GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handler, refusing a redirect whose target the URL guard refuses."""

    def __init__(self, allow_private: bool = False, resolve=None):
        super().__init__()
        self.allow_private = allow_private
        self.resolve = resolve or url_guard.system_resolve

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        reason = url_guard.url_refusal(newurl, self.allow_private, self.resolve)
        if reason:
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl} refused by the URL guard: {reason}",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def install(environ=None) -> urllib.request.OpenerDirector:
    """Make an opener with ``GuardedRedirectHandler`` urllib's global one (``GRAIN_URL_ALLOW_PRIVATE`` read from
    ``environ``, default the process environment); returns it."""
    opener = urllib.request.build_opener(GuardedRedirectHandler(url_guard.allow_private_from_env(environ)))
    urllib.request.install_opener(opener)
    return opener


__all__ = ["GuardedRedirectHandler", "install"]
