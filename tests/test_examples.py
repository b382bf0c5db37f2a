"""clients/examples against the real ``twistd -n pns4ones``: the PHP and shell senders; the 1C module's request checked against them."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pns4ones_client import Subscriber

from .support import ServerProcess, wait_for, without_id
from .tools import need, require

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "clients" / "examples"
PHP = EXAMPLES / "send.php"
SHELL = EXAMPLES / "send.sh"
BSL = EXAMPLES / "Pns4OnesSender.bsl"

TITLE = 'Заказ "№5" \\ срочно 😀'
EXPECTED = {"notification": {"title": TITLE, "body": "строка", "important": False}}


class ExampleSenders(SynchronousTestCase):
    """One server for both examples (each test subscribes its own user)."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ServerProcess()
        cls.app = cls.server.create_app("Web shop")
        cls.server.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.cleanup()

    def subscribe(self, user: str) -> Subscriber:
        before = self.server.log().count("subscription registered")
        sub = Subscriber("127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib1", user, timeout=5).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: self.server.log().count("subscription registered") > before, what="registration")
        return sub

    def run_example(self, command: list[str], key: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PNS4ONES_URL": self.server.url, "PNS4ONES_SERVER_KEY": key or self.app["server_key"]}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)

    def test_php_reaches_a_subscriber(self) -> None:
        """php send.php sends title, body and data to the user's session and prints the server's counts."""
        require("php", "php-curl")
        sub = self.subscribe("php-user")
        result = self.run_example([need("php"), str(PHP), "ib1", "php-user", TITLE, "строка", "order=5", "note=a=b"])
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(without_id(json.loads(result.stdout)), {"sessions": 1, "users": 1, "stored": False})
        self.assertEqual(sub.receive(5), {**EXPECTED, "data": {"order": "5", "note": "a=b"}})

    def test_php_errors(self) -> None:
        """A wrong server key: exit code 1 and the service's reason on stderr; too few arguments: usage, exit 2."""
        require("php", "php-curl")
        result = self.run_example([need("php"), str(PHP), "ib1", "u", "t"], key="wrong")
        self.assertEqual(result.returncode, 1)
        self.assertIn("401", result.stderr)
        self.assertIn("server key", result.stderr)
        result = self.run_example([need("php"), str(PHP), "ib1"])
        self.assertEqual(result.returncode, 2)
        self.assertIn("usage", result.stderr)

    def test_shell_reaches_a_subscriber(self) -> None:
        """sh send.sh (curl + jq) sends to the user's session and prints the server's counts."""
        require("jq", "curl")
        sub = self.subscribe("sh-user")
        result = self.run_example(["sh", str(SHELL), "ib1", "sh-user", TITLE, "строка"])
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(without_id(json.loads(result.stdout)), {"sessions": 1, "users": 1, "stored": False})
        self.assertEqual(sub.receive(5), EXPECTED)

    def test_shell_errors(self) -> None:
        """A wrong server key: non-zero exit and the service's JSON reason on stderr."""
        require("jq", "curl")
        result = self.run_example(["sh", str(SHELL), "ib1", "u", "t"], key="wrong")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unauthorized", result.stderr)


# -- the 1C module, which cannot run here: its request against the PHP one and the README ---------

#: The module's parameters, and what the PHP example is given in their place.
BSL_PARAMETERS = {
    "ИдентификаторИБ": "ib-1",
    "ИдентификаторПользователя": "user-1",
    "Заголовок": "title",
    "Текст": "text",
    "Данные": {"k": "v"},
}
BSL_LITERALS = {"Ложь": False, "Истина": True}


def bsl_request(text: str) -> dict[str, Any]:
    """The request the module builds: its ``Новый Структура`` + ``Вставить`` statements as a dict."""
    structures = {name: {} for name in re.findall(r"^\s*(\w+) = Новый Структура;", text, re.M)}
    for name, key, value in re.findall(r'^\s*(\w+)\.Вставить\("(\w+)", (.+?)\);', text, re.M):
        if name not in structures:
            continue
        value = value.strip()
        if value in structures:
            structures[name][key] = structures[value]
        elif value in BSL_PARAMETERS:
            structures[name][key] = BSL_PARAMETERS[value]
        elif value in BSL_LITERALS:
            structures[name][key] = BSL_LITERALS[value]
        else:
            structures[name][key] = json.loads(value)  # a string literal
    return structures["Запрос"]


def php_request() -> dict[str, Any]:
    p = BSL_PARAMETERS
    code = f"require {json.dumps(str(PHP))}; echo json_encode(pns_user_message('{p['ИдентификаторИБ']}', '{p['ИдентификаторПользователя']}', '{p['Заголовок']}', '{p['Текст']}', ['k' => 'v']));"
    result = subprocess.run([need("php"), "-r", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def merged(into: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    for key, value in doc.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merged(into[key], value)
        else:
            into.setdefault(key, value)
    return into


def documented_request() -> dict[str, Any]:
    """Every member of the curl ``-d '{"Recipient": ...}'`` send requests of README.md and docs/, merged."""
    found: dict[str, Any] = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        for body in re.findall(r"-d '(\{.*?\})'", page.read_text(encoding="utf-8"), re.S):
            try:
                doc = json.loads(body)
            except ValueError:
                continue  # a shell variable inside: not a literal request
            if isinstance(doc, dict) and "Recipient" in doc:
                merged(found, doc)
    if not found:
        raise AssertionError("no curl -d '{\"Recipient\": ...}' example in README.md or docs/")
    return found


def keys(doc: Any) -> Any:
    return {k: keys(v) for k, v in doc.items()} if isinstance(doc, dict) else None


class OneCModule(SynchronousTestCase):
    def setUp(self) -> None:
        self.text = BSL.read_text(encoding="utf-8")

    def test_request_body_matches_php_and_readme(self) -> None:
        """The module's JSON body has exactly the PHP example's members and values, all of them in the documentation's request."""
        request = bsl_request(self.text)
        self.assertEqual(request, php_request())
        self.assertEqual(list(request), ["Recipient", "Message"])
        documented = documented_request()

        def within(ours: Any, theirs: Any, path: str = "") -> None:
            for key, value in ours.items():
                self.assertIn(key, theirs, f"{path}{key} is not in the documentation's request")
                if isinstance(value, dict) and key != "Data":
                    within(value, theirs[key], f"{path}{key}.")

        within(request, documented)

    def test_http_requests_match_php(self) -> None:
        """Same calls as send.php: GET /auth?server_key=, POST /sendmessage with Bearer and JSON headers, one retry on 401/403."""
        php = PHP.read_text(encoding="utf-8")
        for needle in (
            "'/auth?server_key='",
            "'/sendmessage'",
            "'Authorization: Bearer '",
            "'Content-Type: application/json; charset=utf-8'",
            "$status === 401 || $status === 403",
        ):
            self.assertIn(needle, php)
        for needle in (
            'Новый HTTPЗапрос("/auth?server_key=" + КодироватьСтроку(КлючСервера, СпособКодированияСтроки.КодировкаURL))',
            "Соединение.Получить(Запрос)",
            'Новый HTTPЗапрос("/sendmessage")',
            'Запрос.Заголовки.Вставить("Authorization", "Bearer " + Токен)',
            'Запрос.Заголовки.Вставить("Content-Type", "application/json; charset=utf-8")',
            "ИспользованиеByteOrderMark.НеИспользовать",
            "Соединение.ОтправитьДляОбработки(Запрос)",
            "Ответ.КодСостояния = 401 Или Ответ.КодСостояния = 403",
        ):
            self.assertIn(needle, self.text)
        self.assertEqual(self.text.count("Отправить(Соединение, Тело, ПолучитьТокен(Соединение, КлючСервера))"), 2)

    def test_blocks_are_balanced(self) -> None:
        """Every Функция/Если/Попытка has its end, in order (a cheap syntax check of code that cannot run here)."""
        pairs = {
            "Функция": "КонецФункции",
            "Процедура": "КонецПроцедуры",
            "Если": "КонецЕсли",
            "Попытка": "КонецПопытки",
            "Для": "КонецЦикла",
            "Пока": "КонецЦикла",
        }
        stack: list[str] = []
        for number, line in enumerate(self.text.splitlines(), 1):
            word = (re.match(r"\s*(\w+)", line.split("//")[0]) or [None, None])[1]
            if word in pairs:
                stack.append(pairs[word])
            elif word in pairs.values():
                self.assertTrue(stack and stack.pop() == word, f"line {number}: unexpected {word}")
        self.assertEqual(stack, [])
        self.assertEqual(len(re.findall(r"^Функция ", self.text, re.M)), 4)

    def test_examples_parse(self) -> None:
        """php -l and sh -n accept the examples."""
        self.assertEqual(subprocess.run([need("php"), "-l", str(PHP)], capture_output=True, timeout=30).returncode, 0)
        self.assertEqual(subprocess.run(["sh", "-n", str(SHELL)], capture_output=True, timeout=30).returncode, 0)
