"""twistd integration: ``twistd -n pns4ones [options]`` and ``twistd pns4ones admin ...``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.python import usage

from . import config as _config

if TYPE_CHECKING:  # (imported when used: twistd loads this module for --help too)
    from .service import PnsService
    from .tls import ReloadableServerTLS


class AdminOptions(usage.Options):
    """``twistd pns4ones admin <command> ...``: the arguments go to :mod:`pns4ones.cli`."""

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        self.argv = list(options or [])

    def __str__(self) -> str:
        return "Usage: twistd pns4ones admin <command> [...]  (see: twistd pns4ones admin --help)\n"


class Options(usage.Options):
    """Options of ``twistd pns4ones``, in every form the original's manual shows."""

    subCommands = [("admin", None, AdminOptions, "run an admin command (list, create, ...)")]

    def __init__(self) -> None:
        super().__init__()
        self.cli: dict[str, str] = {}
        self.config: _config.Config | None = None
        self.tls: ReloadableServerTLS | None = None

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        try:
            self.cli, positional = _config.parse_argv(options)
        except _config.HelpRequested:
            print(_config.help_text())
            raise SystemExit(0) from None
        except _config.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if positional:
            if positional[0] != "admin":
                raise usage.UsageError(f"unexpected argument {positional[0]!r} (options start with -- or /; see -h)")
            self.subCommand = "admin"
            self.subOptions = AdminOptions()
            self.subOptions.parseOptions(positional[1:])
            self.subOptions.parent = self
            return
        self.postOptions()

    def postOptions(self) -> None:
        try:
            self.config = _config.build(self.cli)
            if self.config.ssl_mode != "None":
                # Load and check the certificate now, so a refusal comes before anything listens.
                from . import tls

                self.tls = tls.from_config(self.config)
        except _config.ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def __str__(self) -> str:
        return _config.help_text() + "\n"


def makeService(options: Options, reactor: Any = None) -> PnsService:
    if reactor is None:
        from twisted.internet import reactor
    if getattr(options, "subCommand", None) == "admin":
        from . import cli

        argv = list(options.subOptions.argv)
        for name in ("data_dir", "config"):
            if name in options.cli and f"--{name.replace('_', '-')}" not in argv:
                argv = [f"--{name.replace('_', '-')}", options.cli[name], *argv]
        raise SystemExit(cli.main(argv, prog="twistd pns4ones admin", as_data_owner=True))
    from .service import PnsService

    assert options.config is not None
    return PnsService(options.config, reactor, tls=options.tls)
