"""
The Russian texts of what an administrator reads outside the admin panel: the
comments of the installed ``pns4ones.ini`` (:mod:`pns4ones.inifile`), the
option help (``twistd -n pns4ones -h``) and ``pns4ones-admin --help`` with every
subcommand's help (:mod:`pns4ones.cli`).  The panel has its own catalogue
(``admin/locale/*.json``).

Keyed by the English text, as gettext is: an English text that changes or is
added without its Russian is found by tests/test_cli_locale.py.  The language
is Russian when the locale says so (``LC_ALL``, else ``LC_MESSAGES``, else
``LANG`` starting with ``ru``), English otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

LANGUAGES = ("en", "ru")


def language(environ: Mapping[str, str] | None = None) -> str:
    """``ru`` when the locale (LC_ALL, else LC_MESSAGES, else LANG) is Russian, else ``en``."""
    environ = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name, "")
        if value:
            return "ru" if value.lower().startswith("ru") else "en"
    return "en"


def translator(lang: str | None = None, seen: set[str] | None = None) -> Callable[[str], str]:
    """
    ``_(text)`` for ``lang`` (default: the locale's): the Russian of an English
    text, or the text itself.  ``seen`` collects every text asked for (the tests
    check that each has its Russian, and that the catalogue has nothing else).
    """
    table = RU if (language() if lang is None else lang) == "ru" else {}

    def _(text: str) -> str:
        if seen is not None:
            seen.add(text)
        return table.get(text, text)

    return _


# -- argparse in Russian --------------------------------------------------------------------


def parser_class(lang: str | None = None, seen: set[str] | None = None) -> type[argparse.ArgumentParser]:
    """
    An ``ArgumentParser`` whose usage, section titles, ``-h`` help and error
    prefix are in ``lang``; its subparsers are of the same class (argparse makes
    them with the parent's class), so they follow.
    """
    _ = translator(lang, seen)

    class Formatter(argparse.RawDescriptionHelpFormatter):
        def start_section(self, heading: str | None) -> None:
            super().start_section(_(heading) if heading else heading)

        def add_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None = None) -> None:
            super().add_usage(usage, actions, groups, _("usage: ") if prefix is None else prefix)

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args: Any, add_help: bool = True, **kwargs: Any) -> None:
            kwargs.update(formatter_class=Formatter, add_help=False)  # our -h, its help translated
            super().__init__(*args, **kwargs)
            if add_help:
                self.add_argument("-h", "--help", action="help", default=argparse.SUPPRESS, help=_("show this help message and exit"))

        def error(self, message: str) -> NoReturn:
            self.print_usage(sys.stderr)
            self.exit(2, f"{self.prog}: {_('error')}: {message}\n")

    return Parser


#: English -> Russian.
RU: dict[str, str] = {
    # argparse's words
    "usage: ": "использование: ",
    "positional arguments": "аргументы",
    "options": "параметры",
    "show this help message and exit": "показать эту справку и выйти",
    "error": "ошибка",
    # -- pns4ones.ini's header (inifile.HEADER) --
    (
        "; pns4ones configuration: `key = value` lines, no sections; `;` or `#` starts a comment.\n"
        "; Every key is also a command-line option (twistd -n pns4ones -h lists them).\n"
        "; After a change: systemctl reload pns4ones (or pns4ones-admin restart). A new process\n"
        "; takes over every connection and the 1C desktops stay connected. Do not use\n"
        "; systemctl restart or stop for that: they disconnect every 1C desktop, and the\n"
        "; stock 1C extension does not reconnect (each user has to restart 1C).\n"
        "; This directory holds the configuration, readable by the service user and root\n"
        "; only (it may hold TLS certificates and their keys). The data (the store with the\n"
        "; applications, keys and tokens) is in data_dir, /var/lib/pns4ones.\n"
    ): (
        "; Настройки pns4ones: строки `ключ = значение`, без разделов; `;` или `#` начинают комментарий.\n"
        "; Каждый ключ также можно задать в командной строке (список: twistd -n pns4ones -h).\n"
        "; После изменения: systemctl reload pns4ones (или pns4ones-admin restart). Новый процесс\n"
        "; принимает все соединения, и рабочие места 1С остаются подключёнными. Не используйте\n"
        "; для этого systemctl restart или stop: они отключают все рабочие места 1С, а типовое\n"
        "; расширение 1С не переподключается (каждому пользователю придётся перезапустить 1С).\n"
        "; Этот каталог содержит настройки и доступен только пользователю службы и root\n"
        "; (здесь могут лежать сертификаты TLS и их ключи). Данные (хранилище с приложениями,\n"
        "; ключами и ключами доступа) находятся в data_dir, /var/lib/pns4ones.\n"
    ),
    # -- the options (config.OPTIONS): INI comments and twistd -n pns4ones -h --
    "INI file (default /etc/pns4ones/pns4ones.ini, else DATA_DIR/pns4ones.ini, when present)": (
        "файл настроек INI (по умолчанию /etc/pns4ones/pns4ones.ini, иначе DATA_DIR/pns4ones.ini, если он есть)"
    ),
    "where the store, keys and account live (default /var/lib/pns4ones for root and for its owner, the service user; else ~/.config/pns4ones)": (
        "каталог данных: хранилище, ключи, учётная запись администратора (по умолчанию /var/lib/pns4ones для root "
        "и для владельца этого каталога, пользователя службы; для остальных ~/.config/pns4ones)"
    ),
    "send API address: *, *:PORT, HOST, HOST:PORT, [IPv6]:PORT (default *:36696)": (
        "адрес API отправки сообщений: *, *:ПОРТ, ХОСТ, ХОСТ:ПОРТ, [IPv6]:ПОРТ (по умолчанию *:36696)"
    ),
    "add-in subscription address, same syntax (default *:36695)": (
        "адрес, к которому подключается внешняя компонента 1С, в той же записи (по умолчанию *:36695)"
    ),
    "accept add-in clients only from these networks (CIDR, comma-separated; default all)": (
        "принимать подключения внешней компоненты только из этих сетей (CIDR через запятую; по умолчанию из любых)"
    ),
    "port of the admin panel, always on loopback only (default 36697)": (
        "порт веб-панели, она всегда доступна только с этой машины (127.0.0.1; по умолчанию 36697)"
    ),
    "Trace, Debug, Information, Warning (default), Error, Critical, None": (
        "уровень журнала: Trace, Debug, Information, Warning (по умолчанию), Error, Critical, None"
    ),
    "text (default) or json (one JSON event per line)": "формат журнала: text (по умолчанию) или json (одно событие JSON в строке)",
    "None (default), FromStorage, FromFileWithPrivateKey, FromFileWithPassword": (
        "HTTPS для API отправки: None (по умолчанию, без HTTPS), FromStorage, FromFileWithPrivateKey, FromFileWithPassword"
    ),
    "certificate file (PEM or PFX), or its name in the store for FromStorage": (
        "файл сертификата (PEM или PFX) или, для FromStorage, его имя в хранилище"
    ),
    "PEM private key file (FromFileWithPrivateKey)": "файл закрытого ключа в формате PEM (FromFileWithPrivateKey)",
    "password of the PFX file or of an encrypted private key": "пароль файла PFX или зашифрованного закрытого ключа",
    "reverse proxies (CIDR, comma-separated) whose X-Forwarded-For/-Proto name the real sender (default none)": (
        "обратные прокси (CIDR через запятую), заголовкам X-Forwarded-For/-Proto которых можно верить "
        "при определении настоящего отправителя (по умолчанию никакие)"
    ),
    "expires_in of /auth: unix (default, as documented) or legacy (seconds since 0001-01-01, as the original)": (
        "expires_in в ответе /auth: unix (по умолчанию, как в документации) или legacy (секунды от 0001-01-01, как в оригинальном сервисе)"
    ),
    "seconds an access token from /auth stays valid (default 3600, as the original)": (
        "сколько секунд действует ключ доступа из /auth (по умолчанию 3600, как в оригинальном сервисе)"
    ),
    "largest accepted HTTP request body (default 1M)": "наибольший размер тела HTTP-запроса (по умолчанию 1M)",
    "most messages in one POST /sendmessages (default 1000)": "наибольшее число сообщений в одном POST /sendmessages (по умолчанию 1000)",
    "largest accepted add-in registration frame in bytes (default 4096)": (
        "наибольший размер регистрации внешней компоненты, в байтах (по умолчанию 4096)"
    ),
    "seconds a new add-in connection has to register (default 10)": (
        "за сколько секунд новое подключение внешней компоненты должно зарегистрироваться (по умолчанию 10)"
    ),
    "most live add-in connections; 0 = no limit but the open-file limit (default 0)": (
        "наибольшее число подключений внешней компоненты; 0 — без ограничения, кроме предела открытых файлов (по умолчанию 0)"
    ),
    "bytes queued for one slow subscriber before it is cut off (default 1M)": (
        "сколько байт может ждать отправки медленному получателю, прежде чем его отключат (по умолчанию 1M)"
    ),
    "TCP keepalive: idle seconds before the first probe (default 60)": "TCP keepalive: секунд простоя до первой проверки (по умолчанию 60)",
    "TCP keepalive: seconds between probes (default 10)": "TCP keepalive: секунд между проверками (по умолчанию 10)",
    "TCP keepalive: unanswered probes before the peer is dead (default 6)": (
        "TCP keepalive: сколько проверок без ответа, прежде чем соединение считается разорванным (по умолчанию 6)"
    ),
    "seconds an HTTP client may take to send a whole request (default 30)": (
        "за сколько секунд HTTP-клиент должен передать запрос целиком (по умолчанию 30)"
    ),
    "sends per second per application, 0 = unlimited (default 0)": (
        "отправок в секунду на одно приложение, 0 — без ограничения (по умолчанию 0)"
    ),
    "also serve /metrics on this address (syntax of listen, default port 36698; default: only on the admin listener)": (
        "отдавать /metrics также на этом адресе (запись как у listen, порт по умолчанию 36698; "
        "по умолчанию /metrics есть только на адресе веб-панели)"
    ),
    "USER:PASSWORD that scrapes of metrics_listen must send (HTTP basic auth; default none)": (
        "ПОЛЬЗОВАТЕЛЬ:ПАРОЛЬ, которые должен передавать Prometheus при опросе metrics_listen (HTTP basic auth; по умолчанию не нужны)"
    ),
    "sqlite (default: DATA_DIR/pns4ones.db), sqlite:///PATH.db, or postgresql://USER[:PASSWORD]@HOST:PORT/DB to share one store between nodes": (
        "хранилище: sqlite (по умолчанию: DATA_DIR/pns4ones.db), sqlite:///ПУТЬ.db или "
        "postgresql://ПОЛЬЗОВАТЕЛЬ[:ПАРОЛЬ]@ХОСТ:ПОРТ/БАЗА — одно хранилище на несколько узлов"
    ),
    "file holding the PostgreSQL password (instead of the URL or PGPASSWORD)": (
        "файл с паролем PostgreSQL (вместо пароля в URL или PGPASSWORD)"
    ),
    "local (default: one process) or redis://HOST:PORT/DB (rediss:// for TLS) to fan out between nodes": (
        "local (по умолчанию: один процесс) или redis://ХОСТ:ПОРТ/БАЗА (rediss:// для TLS) для рассылки между узлами"
    ),
    "this node's name in presence and logs when hub is redis (default HOSTNAME:LISTEN_PORT)": (
        "имя этого узла в сведениях о присутствии и в журнале при hub = redis (по умолчанию ИМЯ_ХОСТА:ПОРТ_LISTEN)"
    ),
    "seconds after which the other nodes forget a node that stopped refreshing its presence in Redis (default 15; refreshed every third of it)": (
        "через сколько секунд остальные узлы забывают узел, переставший обновлять своё присутствие в Redis "
        "(по умолчанию 15; обновляется каждую треть этого срока)"
    ),
    "seconds between checks for changes made by the admin CLI (default 1)": (
        "секунд между проверками изменений, сделанных через pns4ones-admin (по умолчанию 1)"
    ),
    "longest TTL a sender may ask to keep a message for offline users, in seconds (default 86400)": (
        "наибольший срок (TTL, в секундах), на который отправитель может попросить сохранить сообщение "
        "для пользователей не в сети (по умолчанию 86400)"
    ),
    "most kept messages for one user; the oldest is dropped first (default 100)": (
        "наибольшее число сохранённых сообщений одного пользователя; первым удаляется самое старое (по умолчанию 100)"
    ),
    "most kept messages for one application; the oldest is dropped first (default 100000)": (
        "наибольшее число сохранённых сообщений одного приложения; первым удаляется самое старое (по умолчанию 100000)"
    ),
    "most members of one group (default 10000)": "наибольшее число участников одной группы (по умолчанию 10000)",
    "most groups of one application (default 10000)": "наибольшее число групп одного приложения (по умолчанию 10000)",
    "browser origins allowed to subscribe over WebSocket/SSE (comma-separated, e.g. https://erp.example.com; * = any; default none)": (
        "сайты (origin), страницам которых разрешено подписываться через WebSocket/SSE "
        "(через запятую, например https://erp.example.com; * — любые; по умолчанию никакие)"
    ),
    "seconds a subscription ticket from /tickets is valid when no TTL is asked (default 300)": (
        "сколько секунд действует билет подписки из /tickets, если TTL не указан (по умолчанию 300)"
    ),
    "longest TTL /tickets grants (default 3600)": "наибольший TTL билета, который выдаёт /tickets (по умолчанию 3600)",
    "seconds between WebSocket pings (default 30)": "секунд между ping по WebSocket (по умолчанию 30)",
    "seconds a WebSocket peer has to answer a ping before it is closed (default 30)": (
        "за сколько секунд клиент WebSocket должен ответить на ping, иначе соединение закрывается (по умолчанию 30)"
    ),
    "seconds between Server-Sent Events comment heartbeats (default 15)": (
        "секунд между пустыми сообщениями-пульсами Server-Sent Events (по умолчанию 15)"
    ),
    "send API HTTP: lean (default: one bounded HTTP/1.1 state machine over httptools answers the send routes and hands the rest to twisted.web) or twisted (twisted.web for everything, the reference path)": (
        "HTTP для API отправки: lean (по умолчанию: запросы отправки обслуживает один ограниченный конечный автомат "
        "HTTP/1.1 на httptools, остальные он передаёт twisted.web) или twisted (всё через twisted.web, эталонный путь)"
    ),
    "seconds of messages kept per information base for resuming WebSocket/SSE clients (default 120; 0 = none)": (
        "за сколько секунд хранить сообщения каждой информационной базы, чтобы клиенты WebSocket/SSE "
        "после обрыва получили пропущенное (по умолчанию 120; 0 — не хранить)"
    ),
    "most messages kept per information base for resuming clients (default 1000)": (
        "наибольшее число таких сообщений на одну информационную базу (по умолчанию 1000)"
    ),
    "sends the delivery trace keeps in memory: admin panel Trace page, pns4ones-admin trace (default 5000; 0 = off)": (
        "сколько последних отправок хранит в памяти журнал доставки: страница «Доставка» панели, "
        "pns4ones-admin trace (по умолчанию 5000; 0 — не вести)"
    ),
    "keep each traced message's text (title, body, data; its first 2000 characters) in the delivery trace (default false)": (
        "хранить в журнале доставки и текст сообщения (заголовок, текст, данные; первые 2000 символов) (по умолчанию false)"
    ),
    # -- twistd -n pns4ones -h (config.help_text) --
    "Options (also INI keys; write them as --name=value, --name value, -name=value or /name value):": (
        "Параметры (они же ключи INI; записываются как --имя=значение, --имя значение, -имя=значение или /имя значение):"
    ),
    "show this help": "показать эту справку",
    "Usage:": "Запуск:",
    "the commands: {program} admin --help": "список команд: {program} admin --help",
    # -- pns4ones-admin --help (cli.py) --
    "Administer pns4ones applications (changes reach a running server within a second).": (
        "Управление приложениями pns4ones (работающий сервер видит изменения в течение секунды)."
    ),
    "commands:": "команды:",
    "<command>": "<команда>",
    "data directory of the service": "каталог данных службы",
    "the service's INI file (for data_dir)": "файл настроек службы (INI), из него берётся data_dir",
    "the store: sqlite, sqlite:///PATH.db or postgresql://USER@HOST:PORT/DB (default: the config file's store, else DATA_DIR/pns4ones.db)": (
        "хранилище: sqlite, sqlite:///ПУТЬ.db или postgresql://ПОЛЬЗОВАТЕЛЬ@ХОСТ:ПОРТ/БАЗА "
        "(по умолчанию store из файла настроек, иначе DATA_DIR/pns4ones.db)"
    ),
    "machine-readable output": "вывод в JSON, для программ",
    "list the applications with their keys": "список приложений с их ключами",
    "create an application: create NAME": "создать приложение: create ИМЯ",
    "new server key for an application (revokes its tokens): upd_srv_key ID": (
        "новый ключ сервера приложения (его ключи доступа отзываются): upd_srv_key ИД"
    ),
    "new client key for an application (ends its live subscriptions): upd_cli_key ID": (
        "новый ключ клиента приложения (подключённые сеансы 1С этого приложения отключаются): upd_cli_key ИД"
    ),
    "remove an application (ends its subscriptions, revokes its tokens): remove ID": (
        "удалить приложение (его подписки отключаются, ключи доступа отзываются): remove ИД"
    ),
    "revoke every access token of an application: reset_token ID": "отозвать все ключи доступа приложения: reset_token ИД",
    "list the groups of an application: groups ID [IB_ID]": "список групп приложения: groups ИД [ИД_ИБ]",
    "list the members of a group: group_members ID IB_ID GROUP": "участники группы: group_members ИД ИД_ИБ ГРУППА",
    "create or upgrade the store's schema and report its version": "создать или обновить схему хранилища и показать её версию",
    "write everything in the store (applications with keys sealed, tokens, groups, kept messages, admin account) as JSON: export FILE|-": (
        "выгрузить всё хранилище (приложения с зашифрованными ключами, ключи доступа, группы, сохранённые сообщения, "
        "учётную запись администратора) в JSON: export ФАЙЛ|-"
    ),
    "load an export into an empty store (--replace: overwrite a store that has applications): import FILE|-": (
        "загрузить выгрузку в пустое хранилище (--replace: заменить хранилище, в котором уже есть приложения): import ФАЙЛ|-"
    ),
    "count the messages kept for offline users, per application (and how many were dropped or expired)": (
        "число сообщений, сохранённых для пользователей не в сети, по приложениям (и сколько удалено или истекло)"
    ),
    "make the running server re-read its HTTPS certificate files (same as SIGHUP)": (
        "заставить работающий сервер перечитать файлы сертификата HTTPS (то же, что SIGHUP)"
    ),
    "restart the running server from the code and configuration on disk, keeping the 1C desktops connected (what systemctl reload pns4ones does; SIGUSR2 too)": (
        "перезапустить работающий сервер с программой и настройками с диска, не отключая рабочие места 1С "
        "(это и делает systemctl reload pns4ones; то же даёт SIGUSR2)"
    ),
    "live figures of the running server: uptime, subscriptions, sends, store, listeners": (
        "текущие показатели работающего сервера: время работы, подписки, отправки, хранилище, адреса"
    ),
    "file to write (created with mode 0600: it holds every secret), or - for standard output": (
        "файл для записи (создаётся с правами 0600: в нём все секреты) или - для стандартного вывода"
    ),
    "a file written by export, or - for standard input": "файл, записанный командой export, или - для стандартного ввода",
    "empty the target store first (it may have applications)": "сначала очистить хранилище (в нём могут быть приложения)",
    "application id (see list)": "идентификатор приложения (см. list)",
    "only this information base": "только эта информационная база",
    "information base id": "идентификатор информационной базы",
    "group name": "имя группы",
    "admin port of the server (default: the one it recorded in DATA_DIR/admin.json)": (
        "порт веб-панели сервера (по умолчанию тот, что записан в DATA_DIR/admin.json)"
    ),
    "title of the new application": "название нового приложения",
    "the administrators' actions (panel and this command), newest first: audit [--limit N]": (
        "действия администраторов (в панели и этой командой), сначала новые: audit [--limit N]"
    ),
    "set the admin panel's password, asked for (or one line of standard input); ends every panel session": (
        "задать пароль веб-панели (запрашивается, или одна строка стандартного ввода); завершает все сеансы панели"
    ),
    "seal every key in the store under a new key of the key file (--prepare: only add the new key, for several nodes)": (
        "зашифровать все ключи хранилища новым ключом из файла ключей (--prepare: только добавить новый ключ, для нескольких узлов)"
    ),
    "only add a new key to the key file (copy the file to every node, then run the command again)": (
        "только добавить новый ключ в файл ключей (скопируйте файл на каждый узел, затем выполните команду ещё раз)"
    ),
    "keep the previous key(s) in the key file (old backups stay readable with it)": (
        "оставить прежние ключи в файле ключей (с ними читаются старые резервные копии)"
    ),
    "file descriptors kept free for the send API, the admin panel and the store: new add-in connections are refused when fewer are free (default 0 = a tenth of the open-file limit, at least 50 and at most 1000)": (
        "сколько файловых дескрипторов держать свободными для API отправки, веб-панели и хранилища: "
        "новые подключения внешней компоненты отклоняются, когда свободных меньше (по умолчанию 0 = десятая часть "
        "лимита открытых файлов, не меньше 50 и не больше 1000)"
    ),
    "most add-in connections from one address that have not registered yet, same rule (default 1000: a terminal server or NAT reconnecting all its sessions at once)": (
        "наибольшее число ещё не зарегистрированных подключений внешней компоненты с одного адреса, по тому же правилу "
        "(по умолчанию 1000: терминальный сервер или NAT, переподключающий все свои сеансы разом)"
    ),
    "most add-in connections that have not registered yet; past it the oldest one waiting over a second is closed for a newcomer, else the newcomer is refused (default 5000)": (
        "наибольшее число ещё не зарегистрированных подключений внешней компоненты; сверх него ради нового закрывается "
        "самое старое из ждущих дольше секунды, иначе новое отклоняется (по умолчанию 5000)"
    ),
    "the key that seals the keys kept in the store (default DATA_DIR/secrets.key, created at first start; nodes sharing a store need the same file)": (
        "ключ, которым зашифрованы ключи в хранилище (по умолчанию DATA_DIR/secrets.key, создаётся при первом запуске; "
        "узлам с общим хранилищем нужен один и тот же файл)"
    ),
    "how many of the newest records (default 50)": "сколько последних записей показать (по умолчанию 50)",
    "the running server's last sends and what each reached, newest first: trace [--ib IB] [--user USER] [--id ID] [--limit N]": (
        "последние отправки работающего сервера и кому они дошли, сначала новые: trace [--ib IB] [--user USER] [--id ID] [--limit N]"
    ),
    "only this application (its id)": "только это приложение (его идентификатор)",
    "only the sends that concern this user: to him, to his groups, to everyone of his information base (with --ib)": (
        "только отправки, касающиеся этого пользователя: ему, его группам, всем пользователям его информационной базы (с --ib)"
    ),
    "only the send with this message id (the id of the send's answer)": (
        "только отправка с этим идентификатором сообщения (поле id ответа на отправку)"
    ),
    "how many of the newest sends (default 50)": "сколько последних отправок показать (по умолчанию 50)",
    "the administrator's login (default: keep the current one, or admin)": "логин администратора (по умолчанию прежний, или admin)",
}
