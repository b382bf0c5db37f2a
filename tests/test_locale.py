"""Russian for administrators outside the panel: pns4ones-admin --help, twistd -h and the INI comments, kept in step with the English."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

from pns4ones import catalog, cli, config
from pns4ones.inifile import default_ini

from .support import ADMIN, TWISTD

CYRILLIC = re.compile("[а-яА-ЯёЁ]")


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's (argparse has no public way to list them: ``_actions``)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def texts_seen() -> set[str]:
    """Every English text the INI, twistd -h and pns4ones-admin (every subcommand's help too) ask the catalogue for."""
    seen: set[str] = set()
    default_ini(lang="ru", seen=seen)
    config.help_text(lang="ru", seen=seen)
    admin = cli._parser("pns4ones-admin", "ru", seen)
    for parser in parsers(admin):
        parser.format_help()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        admin.parse_args(["--no-such-option"])  # the error line
    return seen


def env(**values: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE")}
    return {**clean, **values}


class LanguageTests(SynchronousTestCase):
    def test_locale_variables_in_posix_order(self) -> None:
        """LC_ALL wins over LC_MESSAGES, which wins over LANG; ru* is Russian, anything else (or nothing) English."""
        self.assertEqual(catalog.language({"LANG": "ru_RU.UTF-8"}), "ru")
        self.assertEqual(catalog.language({"LANG": "ru"}), "ru")
        self.assertEqual(catalog.language({"LC_MESSAGES": "ru_RU.KOI8-R", "LANG": "en_US.UTF-8"}), "ru")
        self.assertEqual(catalog.language({"LC_ALL": "C.UTF-8", "LC_MESSAGES": "ru_RU.UTF-8"}), "en")
        self.assertEqual(catalog.language({"LC_ALL": "ru_UA.UTF-8", "LANG": "de_DE.UTF-8"}), "ru")
        self.assertEqual(catalog.language({"LANG": "en_US.UTF-8"}), "en")
        self.assertEqual(catalog.language({}), "en")


class CatalogueInStepTests(SynchronousTestCase):
    def test_every_text_has_its_russian(self) -> None:
        """Every English text of the INI comments, twistd -h and pns4ones-admin --help (all subcommands) has a Russian one."""
        missing = sorted(texts_seen() - set(catalog.RU))
        self.assertEqual(missing, [], "English texts without Russian in pns4ones/catalog.py")

    def test_no_stale_russian(self) -> None:
        """The catalogue has no Russian text whose English is no longer used (an English text changed without its Russian)."""
        self.assertEqual(sorted(set(catalog.RU) - texts_seen()), [])

    def test_every_help_string_goes_through_the_catalogue(self) -> None:
        """In Russian, every help, description and argument help of pns4ones-admin and its subcommands is Cyrillic (none was left untranslated)."""
        for parser in parsers(cli._parser("pns4ones-admin", "ru")):
            if parser.description:
                self.assertRegex(parser.description, CYRILLIC, parser.prog)
            for action in parser._actions:
                if action.help and action.help != argparse.SUPPRESS:
                    self.assertRegex(action.help, CYRILLIC, f"{parser.prog} {action.option_strings or action.dest}")
                if isinstance(action, argparse._SubParsersAction):
                    for choice in action._choices_actions:
                        self.assertRegex(choice.help or "", CYRILLIC, f"{parser.prog} {choice.dest}")

    def test_english_stays_english(self) -> None:
        """In English (a C or en locale) no help of pns4ones-admin, twistd -h or the INI has a Cyrillic letter."""
        for parser in parsers(cli._parser("pns4ones-admin", "en")):
            self.assertNotRegex(parser.format_help(), CYRILLIC, parser.prog)
        self.assertNotRegex(config.help_text(lang="en"), CYRILLIC)
        self.assertNotRegex(default_ini(lang="en"), CYRILLIC)


class IniTests(SynchronousTestCase):
    def test_russian_ini_sets_the_same(self) -> None:
        """The Russian INI sets exactly what the English one does; every comment line but the commented defaults is Russian."""
        russian, english = default_ini(lang="ru"), default_ini(lang="en")
        self.assertEqual(config.parse_ini(russian), config.parse_ini(english))
        self.assertEqual(len(russian.splitlines()), len(english.splitlines()))
        for line in russian.splitlines():
            if line.startswith("; ") and not re.match(r"; [a-z_]+ =", line):
                self.assertRegex(line, CYRILLIC, line)

    def test_header_advises_reload_not_restart(self) -> None:
        """Both headers say to apply a change with systemctl reload / pns4ones-admin restart, and that restart or stop disconnects 1C."""
        english = default_ini(lang="en").split("\n\n")[0]
        self.assertIn("systemctl reload pns4ones", english)
        self.assertIn("pns4ones-admin restart", english)
        self.assertIn("Do not use\n; systemctl restart or stop for that: they disconnect every 1C desktop", english)
        russian = default_ini(lang="ru").split("\n\n")[0]
        self.assertIn("systemctl reload pns4ones", russian)
        self.assertIn("systemctl restart или stop: они отключают все рабочие места 1С", russian)


class ProcessTests(SynchronousTestCase):
    def run_help(self, command: list[str], **locale: str) -> str:
        result = subprocess.run(command, env=env(**locale), capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_admin_help_follows_the_locale(self) -> None:
        """pns4ones-admin --help and 'create --help' are Russian under LANG=ru_RU.UTF-8, English under LANG=C.UTF-8."""
        russian = self.run_help([ADMIN, "--help"], LANG="ru_RU.UTF-8")
        self.assertIn("использование: pns4ones-admin", russian)
        self.assertIn("перезапустить работающий сервер", russian)
        self.assertIn("показать эту справку и выйти", russian)
        self.assertIn("название нового приложения", self.run_help([ADMIN, "create", "--help"], LC_MESSAGES="ru_RU.UTF-8"))
        english = self.run_help([ADMIN, "--help"], LANG="C.UTF-8")
        self.assertIn("usage: pns4ones-admin", english)
        self.assertIn("keeping the 1C desktops connected", english)

    def test_twistd_help_follows_the_locale(self) -> None:
        """twistd pns4ones -h lists the options with Russian help under LC_ALL=ru_RU.UTF-8."""
        text = self.run_help([TWISTD, "pns4ones", "-h"], LC_ALL="ru_RU.UTF-8")
        self.assertIn("--listen", text)
        self.assertIn("адрес API отправки сообщений", text)

    def test_inifile_writes_utf8_whatever_the_encoding(self) -> None:
        """python -m pns4ones.inifile writes UTF-8 even when the locale's encoding is not (the INI is read as UTF-8)."""
        result = subprocess.run(
            [os.path.join(os.path.dirname(ADMIN), "python"), "-m", "pns4ones.inifile"],
            env=env(LANG="ru_RU.KOI8-R", PYTHONIOENCODING="koi8-r"),
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.decode("utf-8"), default_ini(lang="ru"))


class InProcessHelpTests(SynchronousTestCase):
    def test_main_prints_help_in_the_language_of_the_locale(self) -> None:
        """cli.main with no arguments prints the usage in the locale's language."""
        out = io.StringIO()
        self.patch(os, "environ", env(LANG="ru_RU.UTF-8"))
        with contextlib.redirect_stdout(out):
            self.assertEqual(cli.main([], out=out), 0)
        self.assertIn("<команда>", out.getvalue())
