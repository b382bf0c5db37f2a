"""What ``hub = redis://[USER:PASSWORD@]HOST[:PORT][/DB][?ca_file=PEM]`` says (``rediss://``: TLS)."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from ..interface import HubUnavailable


class RedisURL:
    """The parts of a Redis URL; :class:`~pns4ones.hub.HubUnavailable` names the option when it is wrong."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme.lower() == "rediss"
        try:
            self.host = parts.hostname or "127.0.0.1"
            self.port = parts.port or 6379
        except ValueError as e:
            raise HubUnavailable(f"option 'hub': {e}") from None
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        if self.username and self.password is None:  # redis://PASSWORD@host
            self.username, self.password = None, self.username
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise HubUnavailable(f"option 'hub': the database {path!r} is not a number (redis://HOST:PORT/0)")
        self.db = int(path or 0)
        query = parse_qs(parts.query)
        self.ca_file = (query.get("ca_file") or [""])[0]
        unknown = set(query) - {"ca_file"}
        if unknown:
            raise HubUnavailable(f"option 'hub': unknown URL parameter(s) {', '.join(sorted(unknown))} (only ca_file)")
        if self.ca_file and not self.tls:
            raise HubUnavailable("option 'hub': ca_file needs rediss:// (TLS)")

    def describe(self) -> str:
        """The URL without credentials, for logs."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"

    def tls_creator(self) -> IOpenSSLClientConnectionCreator:
        """Certificate checked against the system's roots (or ``ca_file``) and the host name."""
        from twisted.internet import ssl

        if not self.ca_file:
            return ssl.optionsForClientTLS(self.host)
        try:
            with open(self.ca_file, "rb") as f:
                pem = f.read()
            root = ssl.Certificate.loadPEM(pem)
        except (OSError, Exception) as e:
            raise HubUnavailable(f"option 'hub': cannot read ca_file {self.ca_file}: {e}") from None
        return ssl.optionsForClientTLS(self.host, trustRoot=root)
