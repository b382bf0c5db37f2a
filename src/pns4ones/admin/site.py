"""
The admin listener: its ``Site``, its requests (loopback ``Host`` only, the
security headers on every answer) and the panel's root resource.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.web.resource import Resource

from ..http.site import ApiChannel, ApiSite, BoundedRequest

SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"same-origin",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
    b"Cache-Control": b"no-store",
}


class Panel(Protocol):
    """What the listener needs of the panel: its routes, and the "no such page" answer."""

    def resource(self) -> Resource: ...

    def no_such_page(self, request: Any) -> bytes: ...


class PanelRoot(Resource):
    """
    The panel's routes behind a check Klein lacks: a path that is not UTF-8
    once percent-decoded is "no such page" (Klein: plain text, and a traceback
    in the log).
    """

    isLeaf = True

    def __init__(self, panel: Panel, routes: Resource) -> None:
        super().__init__()
        self.panel = panel
        self.routes = routes

    def render(self, request: Any) -> Any:
        try:
            b"/".join(request.postpath).decode("utf-8")  # (twisted.web percent-decoded each segment)
        except UnicodeDecodeError:
            return self.panel.no_such_page(request)
        return self.routes.render(request)


class AdminRequest(BoundedRequest):
    """A panel request: loopback ``Host`` only; security headers on every answer."""

    def process(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        host = (self.getHeader(b"host") or b"").lower()
        site = cast(AdminSite, cast(ApiChannel, self.channel).site)  # (an AdminSite's channel)
        if host not in site.allowed_hosts:
            site.logger.warn(
                "admin panel: refused a request for Host {host!r} from {peer} (only loopback names are served)",
                host=host.decode("latin-1"),
                peer=getattr(self.getClientAddress(), "host", "?"),
            )
            self.setResponseCode(421)
            self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            self.write(b"421 Misdirected Request: the admin panel answers only to 127.0.0.1, localhost and [::1]\n")
            self.finish()
            return
        super().process()


class AdminSite(ApiSite):
    """The admin listener's ``Site``: bounded like the API's, with :class:`AdminRequest`."""

    requestFactory = AdminRequest
    noisy = False  # no "Starting factory" lines

    def __init__(self, panel: Panel, port: int, max_body_size: int, request_timeout: float, clock: Any = None) -> None:
        # HTML forms: the panel needs twisted.web to parse POSTed form bodies.
        super().__init__(panel.resource(), max_body_size, request_timeout, clock=clock, parsePOSTFormSubmission=True)
        self.allowed_hosts = {f"{name}:{port}".encode() for name in ("127.0.0.1", "localhost", "[::1]")}
        if port == 80:
            self.allowed_hosts |= {b"127.0.0.1", b"localhost", b"[::1]"}
