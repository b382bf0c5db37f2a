"""
The documentation, checked against the code and a running server.

* Every ``docs/`` page has its ``docs/ru/`` counterpart (``README.md`` has
  ``README.ru.md``) with the same code blocks, comments aside, and the same
  doctest markers: the two languages show the same commands.
* The runnable pages (those with ``<!-- doctest -->`` blocks) are run: each
  page's marked shell blocks, in order, in one environment, against a real
  ``twistd -n pns4ones`` on free loopback ports; exit codes and the outputs the
  page shows are compared.
* The worked example of the add-in's byte protocol in ``docs/protocol.md`` is
  what :mod:`pns4ones.wire` produces; links between the pages resolve; advice to
  restart or stop the service says that it disconnects every 1C desktop.

Markers, in an HTML comment on the line before a fenced block:

``<!-- doctest -->``
    run this ``sh`` block (bash, ``set -e -o pipefail``); it must exit 0.
``<!-- doctest exit=N -->``
    run it; it must exit with N.
``<!-- doctest output -->``
    this block is what the doctest block before it prints.  Whitespace is
    ignored and ``…`` stands for any text (ids, keys, times).
``<!-- doctest env -->``
    the page's variables (``export PNS=http://127.0.0.1:36696``): not run; each
    must be a known variable at its documented default, and the test sets its
    own value (the test server's ports).

The commands run with ``pns4ones-admin`` (and ``.venv/bin/pns4ones-admin``)
pointing at the test server's data directory, as the installed configuration
points the real one at ``/var/lib/pns4ones``; everything else is the real
command the page shows (``.venv/bin/python`` is the test environment's Python,
with the client library).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .handoff_support import alive, server_pid
from .support import BIN, ServerProcess, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RU = DOCS / "ru"

#: README.md at most about 12 KB (issue 21).
README_LIMIT = 12 * 1024

#: The variables a page's ``doctest env`` block may set, with their documented defaults.
ENV_DEFAULTS = {
    "PNS": "http://127.0.0.1:36696",
    "PNS_ADMIN": "http://127.0.0.1:36697",
    "PNS4ONES_SERVICE": "127.0.0.1:36695",
}

#: Pages whose commands must be run (a page that loses its markers fails).
MUST_RUN = ("README.md", "README.ru.md", "docs/send-api.md", "docs/groups.md", "docs/kept-messages.md", "docs/subscriptions.md")

#: Code blocks compared between the languages (text blocks, 1C code and diagrams may be translated).
COMPARED = {"sh", "bash", "shell", "console", "ini", "json", "yaml", "nginx", "php", "python"}
SHELL = {"sh", "bash", "shell", "console"}
#: Seconds one block may run.
BLOCK_TIMEOUT = 60.0

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*doctest\b(.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    info: str
    text: str
    marker: str | None  # None: no doctest marker; else the words after "doctest"

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the doctest marker before each."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    last_text = ""
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                last_text = lines[i]
            i += 1
            continue
        fence, info, start = m.group(2), m.group(3).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        marker = _MARKER.match(last_text)
        out.append(Block(page, start + 1, info, "\n".join(body), marker.group(1).strip() if marker else None))
        last_text = ""
    return out


def strip_comment(line: str) -> str:
    """A shell line without its ``# comment`` (quote-aware)."""
    quote = ""
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def comparable(block: Block) -> str:
    """What must be the same in both languages: the block without comments and blank lines."""
    lines = []
    for raw in block.text.splitlines():
        if block.info == "ini":
            line = "" if raw.lstrip().startswith((";", "#")) else raw
        elif block.info in SHELL or block.info in ("yaml", "nginx", "python"):
            line = strip_comment(raw)
        else:
            line = raw
        if line.strip():
            lines.append(line.rstrip())
    return "\n".join(lines)


def page_pairs() -> list[tuple[Path, Path]]:
    """(English page, Russian page) for README.md and every docs/ page."""
    pairs = [(ROOT / "README.md", ROOT / "README.ru.md")]
    pairs += [(page, RU / page.name) for page in sorted(DOCS.glob("*.md"))]
    return pairs


def all_pages() -> list[Path]:
    return [page for pair in page_pairs() for page in pair if page.exists()]


def output_matches(expected: str, actual: str) -> bool:
    """``actual`` is what ``expected`` shows: whitespace ignored, ``…`` for any text."""
    squeeze = re.compile(r"\s+")
    pattern = ".*?".join(re.escape(part) for part in squeeze.sub("", expected).split("…"))
    return re.fullmatch(pattern, squeeze.sub("", actual), re.DOTALL) is not None


# --- the checker itself --------------------------------------------------------------------------


class Checker(SynchronousTestCase):
    def test_output_matching(self) -> None:
        """An output block matches what was printed whitespace aside, with … for any text; any other difference fails."""
        self.assertTrue(output_matches('{"a": "…", "b": 1}', '{"a":"x y z",\n "b": 1}'))
        self.assertTrue(output_matches("pid … -> …\n1", "pid 12 -> 13\n1\n"))
        self.assertFalse(output_matches('{"a": "…", "b": 1}', '{"a": "x", "b": 2}'))
        self.assertFalse(output_matches("1", "12"))

    def test_comment_stripping(self) -> None:
        """A shell comment is dropped, a # inside quotes or a word is kept."""
        self.assertEqual(strip_comment("curl \"$X#y\" -d 'a # b'  # the end"), "curl \"$X#y\" -d 'a # b'  ")
        self.assertEqual(strip_comment("echo ${#x} # n"), "echo ${#x} ")
        self.assertEqual(strip_comment(r'echo "a\\" # c'), r'echo "a\\" ')  # an escaped backslash ends the quote
        self.assertEqual(strip_comment(r'echo "a\" # c"'), r'echo "a\" # c"')  # an escaped quote does not

    def test_markers_and_blocks(self) -> None:
        """A doctest marker belongs to the fenced block right after it, indented ones included."""
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "p.md"
            page.write_text(
                "text\n<!-- doctest exit=1 -->\n```sh\nfalse\n```\n\n- item\n\n  <!-- doctest output -->\n  ```text\n  x\n  ```\n```ini\na = 1\n```\n"
            )
            found = [(b.info, b.text.strip(), b.marker) for b in blocks(page)]
        self.assertEqual(found, [("sh", "false", "exit=1"), ("text", "x", "output"), ("ini", "a = 1", None)])


# --- the two languages ------------------------------------------------------------------------


class Counterparts(SynchronousTestCase):
    def test_every_page_has_its_russian_counterpart(self) -> None:
        """Every docs/ page has a docs/ru/ page of the same name (README.md: README.ru.md), and no Russian page is orphaned."""
        missing = [str(ru.relative_to(ROOT)) for _, ru in page_pairs() if not ru.exists()]
        self.assertEqual(missing, [], "pages without their Russian counterpart")
        orphans = sorted(p.name for p in RU.glob("*.md") if not (DOCS / p.name).exists())
        self.assertEqual(orphans, [], "docs/ru/ pages without an English page")

    def test_counterparts_show_the_same_commands(self) -> None:
        """Both languages of a page have the same code blocks (comments aside) with the same doctest markers, in the same order."""
        for en, ru in page_pairs():
            if not ru.exists():
                continue
            ours = [(b.info, comparable(b), b.marker) for b in blocks(en) if b.info in COMPARED or b.marker is not None]
            theirs = [(b.info, comparable(b), b.marker) for b in blocks(ru) if b.info in COMPARED or b.marker is not None]
            for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
                self.assertEqual(a, b, f"block {i + 1} of {en.relative_to(ROOT)} differs in {ru.relative_to(ROOT)}")
            self.assertEqual(
                len(ours), len(theirs), f"{en.relative_to(ROOT)} and {ru.relative_to(ROOT)} have different numbers of code blocks"
            )

    def test_readme_is_short(self) -> None:
        """README.md stays at most about 12 KB; the rest lives in docs/."""
        size = len((ROOT / "README.md").read_bytes())
        self.assertLessEqual(size, README_LIMIT, f"README.md has {size} bytes")
        chars = len((ROOT / "README.ru.md").read_text(encoding="utf-8"))
        self.assertLessEqual(chars, README_LIMIT * 1.3, f"README.ru.md has {chars} characters")

    def test_links_resolve(self) -> None:
        """Every relative link of README.md, README.ru.md and docs/ names a file of the repository."""
        link = re.compile(r"\]\(([^)\s]+)\)")
        broken = []
        for page in all_pages():
            for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
                for target in link.findall(line):
                    if re.match(r"[a-z]+:", target) or target.startswith("#"):
                        continue
                    path = target.split("#", 1)[0]
                    if not (page.parent / path).exists():
                        broken.append(f"{page.relative_to(ROOT)}:{number}: {target}")
        self.assertEqual(broken, [])

    def test_restart_and_stop_are_described_as_disconnecting(self) -> None:
        """Wherever a page names `systemctl restart` or `stop`, the same paragraph says that it disconnects the 1C desktops."""
        offending = []
        for page in all_pages():
            for paragraph in re.split(r"\n\s*\n", page.read_text(encoding="utf-8")):
                # (`systemctl restart postgresql` is not about this service)
                if re.search(r"systemctl (restart|stop)\b(?!\s+(?!pns4ones)[a-z])", paragraph) and not re.search(
                    r"disconnect|отключ", paragraph, re.IGNORECASE
                ):
                    offending.append(f"{page.relative_to(ROOT)}: {paragraph.strip()[:120]!r}")
        self.assertEqual(offending, [])

    def test_every_option_is_in_the_configuration_page(self) -> None:
        """Every option of the service has a row in the configuration page's tables, in both languages."""
        from pns4ones.config import OPTIONS

        for page in (DOCS / "configuration.md", RU / "configuration.md"):
            rows = {m.group(1) for m in re.finditer(r"^\|\s*`([a-z_]+)`", page.read_text(encoding="utf-8"), re.MULTILINE)}
            missing = [o.name for o in OPTIONS if o.name not in rows]
            self.assertEqual(missing, [], f"options without a row in {page.relative_to(ROOT)}")


# --- the protocol document --------------------------------------------------------------------


class ProtocolExample(SynchronousTestCase):
    def test_worked_example_is_what_the_code_produces(self) -> None:
        """The client key, registration and message frame shown in docs/protocol.md are the bytes pns4ones.wire makes of the same inputs."""
        from pns4ones import messages, wire

        key = wire.ClientKey(bytes(range(32)), bytes(range(32, 48)))
        plaintext = messages.render_addin_json(
            messages.Message(topic="t", notification=messages.Notification(title="Привет \U0001f44b", important=True))
        )
        registration = wire.encode_registration(key, "app", "ib", "user")
        frame = wire.encode_frame(key, plaintext)
        text = re.sub(r"\s+", " ", (DOCS / "protocol.md").read_text(encoding="utf-8"))
        for name, expected in (
            ("client key", key.encode()),
            ("plaintext", plaintext.decode("utf-8")),
            ("registration", registration.hex(" ")),
            ("frame", frame.hex(" ")),
        ):
            self.assertIn(expected, text, f"docs/protocol.md does not show the {name} pns4ones.wire makes")
        # And the registration decodes back (the doc's reading of it is the parser's).
        parsed = wire.parse_registration(registration[2:])
        self.assertEqual((parsed.app_id, parsed.ib_id, parsed.user_id, parsed.group), ("app", "ib", "user", ""))
        self.assertTrue(parsed.verify(key))


# --- running the pages ------------------------------------------------------------------------


class DocServer(ServerProcess):
    """The test server; after ``pns4ones-admin restart`` another process serves, and stop() ends that one."""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        current = server_pid(self.data_dir)
        if self.proc is not None and current and current != self.proc.pid and alive(current):
            os.kill(current, sig)
            wait_for(lambda: not alive(current), timeout, what=f"process {current} to stop")
        return super().stop(sig, timeout)


def _runnable(page: Path) -> bool:
    return any(b.marker is not None and b.marker.split()[:1] != ["output"] for b in blocks(page))


class PageRun:
    """A page's doctest blocks run in order, sharing their variables."""

    def __init__(self, page: Path, server: DocServer, work: Path) -> None:
        self.page = page
        self.server = server
        self.work = work
        self.env = {
            "PATH": f"{work / '.venv' / 'bin'}:{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PNS": server.url,
            "PNS_ADMIN": f"http://127.0.0.1:{server.admin_port}",
            "PNS4ONES_SERVICE": f"127.0.0.1:{server.service_port}",
        }

    def check_env_block(self, block: Block) -> None:
        for line in block.text.splitlines():
            line = strip_comment(line).strip()
            if not line:
                continue
            words = shlex.split(line)
            if words and words[0] == "export":
                words = words[1:]
            for word in words:
                name, _, value = word.partition("=")
                if name not in ENV_DEFAULTS:
                    raise AssertionError(f"{block.where()}: {name} is not a variable the doc test sets ({', '.join(ENV_DEFAULTS)})")
                if value != ENV_DEFAULTS[name]:
                    raise AssertionError(f"{block.where()}: {name}={value}, but its documented default is {ENV_DEFAULTS[name]}")

    def run(self, block: Block, expected_exit: int) -> str:
        """Run one block; return its standard output."""
        state = self.work / ".state"
        script = f"set -a\nset -eo pipefail\n{block.text}\nenv -0 > {shlex.quote(str(state))}\n"
        out_path, err_path = self.work / ".stdout", self.work / ".stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(["bash", "-c", script], cwd=self.work, env=self.env, stdout=out, stderr=err, start_new_session=True)
            try:
                code = proc.wait(BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # background commands the block left
                except ProcessLookupError:
                    pass
                proc.wait()
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        if code != expected_exit:
            what = f"did not finish within {BLOCK_TIMEOUT:g} s" if code is None else f"exited with {code}, expected {expected_exit}"
            raise AssertionError(
                f"{block.where()}: the block {what}\n--- block\n{block.text}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
                f"\n--- server log\n{self.server.log()[-3000:]}"
            )
        if code == 0 and state.exists():
            fields = state.read_bytes().split(b"\0")
            self.env = dict(f.decode("utf-8", "surrogateescape").partition("=")[::2] for f in fields if b"=" in f)
            state.unlink()
        return stdout

    def run_all(self) -> int:
        """Run every doctest block; return how many ran."""
        ran = 0
        last: tuple[Block, str] | None = None
        for block in blocks(self.page):
            if block.marker is None:
                continue
            words = block.marker.split()
            if words[:1] == ["env"]:
                self.check_env_block(block)
                continue
            if words[:1] == ["output"]:
                if last is None:
                    raise AssertionError(f"{block.where()}: an output block without a doctest block before it")
                source, stdout = last
                if not output_matches(block.text, stdout):
                    raise AssertionError(
                        f"{source.where()}: the block printed\n{stdout}\nbut {block.where()} shows\n{block.text}\n--- server log\n{self.server.log()[-2000:]}"
                    )
                last = None
                continue
            if block.info not in SHELL:
                raise AssertionError(f"{block.where()}: a doctest block must be sh, not {block.info!r}")
            expected = 0
            for word in words:
                if word.startswith("exit="):
                    expected = int(word[5:])
            last = (block, self.run(block, expected))
            ran += 1
        return ran


def _work_dir(tmp: Path, data_dir: Path) -> Path:
    """
    A working directory whose ``.venv`` is the real one, except that its
    ``pns4ones-admin`` points at the test server's data directory.  The rest of
    the environment (``lib``, ``pyvenv.cfg``) is linked too, so that
    ``.venv/bin/python`` is the environment's Python, with its packages.
    """
    work = tmp / "work"
    venv = work / ".venv"
    shim = venv / "bin"
    shim.mkdir(parents=True)
    if (BIN.parent / "pyvenv.cfg").exists():  # a virtual environment (not a system Python)
        for entry in BIN.parent.iterdir():
            if entry.name != "bin":
                (venv / entry.name).symlink_to(entry)
    for tool in BIN.iterdir():
        if tool.name != "pns4ones-admin":
            (shim / tool.name).symlink_to(tool)
    admin = shim / "pns4ones-admin"
    admin.write_text(f'#!/bin/sh\nexec {shlex.quote(str(BIN / "pns4ones-admin"))} --data-dir {shlex.quote(str(data_dir))} "$@"\n')
    admin.chmod(0o755)
    return work


class RunnableDocs(SynchronousTestCase):
    def test_the_quick_starts_are_runnable(self) -> None:
        """README.md, README.ru.md and the API pages carry doctest blocks, so their commands are run below."""
        for name in MUST_RUN:
            self.assertTrue(_runnable(ROOT / name), f"{name} has no <!-- doctest --> block")

    def run_page(self, page: Path) -> None:
        missing = [tool for tool in ("curl", "jq") if shutil.which(tool) is None]
        if missing:
            raise SkipTest(f"the documented commands need {' and '.join(missing)}: apt-get install {' '.join(missing)}")
        tmp = Path(tempfile.mkdtemp(prefix="pns4ones-docs-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        server = DocServer()
        self.addCleanup(server.cleanup)
        server.start()
        started = time.monotonic()
        ran = PageRun(page, server, _work_dir(tmp, server.data_dir)).run_all()
        self.assertGreater(ran, 0)
        self.assertLess(time.monotonic() - started, 120, f"{page.name}: its commands took too long")


def _page_test(page: Path) -> Callable[[RunnableDocs], None]:
    def test(self: RunnableDocs) -> None:
        self.run_page(page)

    test.__doc__ = f"The commands of {page.relative_to(ROOT)} run against a real server and print what the page shows."
    return test


# The Russian pages' blocks are the English pages' (test_counterparts_show_the_same_commands):
# running docs/ru/ again would add time, not coverage.  Both READMEs run.
for _page in [ROOT / "README.md", ROOT / "README.ru.md", *sorted(DOCS.glob("*.md"))]:
    if _page.exists() and _runnable(_page):
        _name = re.sub(r"\W", "_", str(_page.relative_to(ROOT)).removesuffix(".md"))
        setattr(RunnableDocs, f"test_page_{_name}", _page_test(_page))
