"""
Message catalogs of the admin panel: ``locale/<lang>.json``, flat keys to texts
with ``{name}`` fields.  Russian is the default; a missing key falls back to
Russian, then to the key itself (a test checks that both catalogs have the same keys).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources

DEFAULT = "ru"
LANGUAGES = ("ru", "en")


def load_catalogs() -> dict[str, dict[str, str]]:
    base = resources.files("pns4ones.admin").joinpath("locale")
    return {lang: json.loads(base.joinpath(f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGUAGES}


class Translator:
    def __init__(self, catalogs: dict[str, dict[str, str]]) -> None:
        self.catalogs = catalogs

    def for_language(self, lang: str) -> Callable[..., str]:
        catalog = self.catalogs.get(lang) or self.catalogs[DEFAULT]
        fallback = self.catalogs[DEFAULT]

        def t(key: str, **fields: object) -> str:
            text = catalog.get(key) or fallback.get(key) or key
            return text.format_map(fields) if fields else text

        return t
