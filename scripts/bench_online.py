"""
Measure the admin panel's Online view with 10,000 live add-in sessions.

    flock /tmp/pns4ones-heavy.lock .venv/bin/python scripts/bench_online.py [--sessions 10000] [--repeat 40]

Starts ``twistd -n pns4ones`` (log level Warning) on loopback, registers the
add-in subscriptions over raw TCP (from 127.0.0.2-127.0.0.9, in steps of 500
that the server must take before the next), logs into the panel over HTTP with
the one-time set-up code, and prints, for the Online page and its live refresh
(``/online.json``, what the open page fetches every two seconds) and a few
variants: the time from sending the request to its last byte (median and 90th
percentile over ``--repeat`` requests on one keep-alive connection, loopback:
the server's time to render, plus well under a millisecond of HTTP), the
server's CPU time per request (from /proc), and the bytes of each answer's body.
Then, in Debian's headless Chromium (through Selenium, as the page tests drive
it; ``--no-browser`` skips it), the browser's side: loading the Online page
(navigation timing) and applying a refresh to it (admin.js's ``renderOnline``
with the layout it causes: rows kept and their times updated, as most refreshes
are, and every row replaced, as when the page's sessions change).

The sessions: two information bases (``erp`` 70 %, ``hr`` 30 %), 8,500 users,
1,500 of them with two sessions, as 1C users with two client windows have.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import re
import resource
import socket
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pns4ones_client.protocol import ClientKey, registration_frame
from tests.support import ServerProcess, wait_for

CODE = re.compile(r"set-up code ([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})")
#: Client addresses the subscriptions come from (each holds at most sessions/8 local ports).
SOURCES = [f"127.0.0.{n}" for n in range(2, 10)]
STEP = 500
PASSWORD = "bench password 1"


class Panel:
    """The admin panel over one keep-alive HTTP connection, with its session cookie."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, float]:
        """(status, headers, body, seconds from sending the request to the body's last byte)."""
        headers = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        started = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        seconds = time.perf_counter() - started
        for line in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = line.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response.status, dict(response.headers), data, seconds

    def csrf(self, path: str) -> str:
        status, _, page, _ = self.request("GET", path)
        assert status == 200, status
        found = re.search(rb'name="csrf" value="([^"]+)"', page)
        assert found is not None
        return found.group(1).decode()

    def setup(self, code: str) -> None:
        form = {"csrf": self.csrf("/setup"), "code": code, "login": "admin", "password": PASSWORD, "password2": PASSWORD}
        status, headers, _, _ = self.request("POST", "/setup", form)
        assert status == 303 and headers["Location"] == "/apps", (status, headers)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect_all(server: ServerProcess, app: dict[str, str], count: int, panel: Panel) -> list[socket.socket]:
    key = ClientKey.decode(app["client_key"])
    socks: list[socket.socket] = []

    def registered(at_least: int = 0) -> bool:
        return int(json.loads(panel.request("GET", "/counts.json")[2])["total"]) >= at_least

    started = time.monotonic()
    for i in range(count):
        ib = "hr" if i % 10 >= 7 else "erp"
        user = f"user{i % 8500:05d}"
        sock = socket.create_connection(("127.0.0.1", server.service_port), timeout=30, source_address=(SOURCES[i % len(SOURCES)], 0))
        sock.sendall(registration_frame(key, app["id"], ib, user, ""))
        socks.append(sock)
        if (i + 1) % STEP == 0:
            wait_for(functools.partial(registered, i + 1 - STEP), 60, 0.02, what=f"{i + 1 - STEP} registrations")
    wait_for(functools.partial(registered, count), 120, 0.05, what=f"{count} registrations")
    print(f"{count} add-in sessions registered in {time.monotonic() - started:.1f} s", flush=True)
    return socks


def measure(panel: Panel, pid: int, path: str, repeat: int) -> dict[str, float]:
    panel.request("GET", path)  # warm: templates compiled, caches filled
    times, sizes = [], set()
    cpu0 = cpu_seconds(pid)
    for _ in range(repeat):
        status, _, body, seconds = panel.request("GET", path)
        assert status == 200, (status, path, body[:300])
        times.append(seconds)
        sizes.add(len(body))
    cpu = (cpu_seconds(pid) - cpu0) / repeat
    times.sort()
    return {
        "median_ms": statistics.median(times) * 1000,
        "p90_ms": times[int(len(times) * 0.9) - 1] * 1000,
        "cpu_ms": cpu * 1000,
        "bytes": max(sizes),
    }


class _Cleanups:
    """What tests.browser.start_chromium needs of a test case: somewhere to register its cleanups."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack

    def addCleanup(self, function: Callable[..., object], *args: object) -> None:
        self.stack.callback(function, *args)


#: Runs in the Online page: fetches its refresh (page 1, and page 2 for other rows), then times
#: renderOnline (admin.js) plus the layout it forces, ``repeat`` times each way.
RENDER_SCRIPT = """
const [repeat, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const box = document.querySelector("[data-online-url]");
  const get = async (url) => JSON.parse(await (await fetch(url, {credentials: "same-origin", cache: "no-store"})).text());
  const cycle = [];
  for (let i = 0; i < repeat; i++) {
    const t0 = performance.now();
    renderOnline(box, await get(box.dataset.onlineUrl));
    document.body.getBoundingClientRect();
    cycle.push(performance.now() - t0);
  }
  const [one, two] = [await get(box.dataset.onlineUrl), await get(box.dataset.onlineUrl + "&page=2")];
  const time = (docs) => docs.map((doc) => {
    const t0 = performance.now();
    renderOnline(box, doc);
    document.body.getBoundingClientRect();
    return performance.now() - t0;
  });
  renderOnline(box, one);
  const kept = time(Array(repeat).fill(one));
  const replaced = time(Array.from({length: repeat}, (_, i) => (i % 2 ? one : two)));
  done({kept, replaced, cycle, rows: document.querySelectorAll("#online-rows tr").length});
})().catch((e) => done({error: String(e)}));
"""


def browser_figures(port: int, app_id: str, repeat: int) -> list[tuple[str, list[float]]]:
    """(what, milliseconds of each try) measured in headless Chromium on the Online page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import start_chromium

    base = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        driver = start_chromium(_Cleanups(stack))
        driver.set_script_timeout(120)
        driver.get(base + "/login")
        driver.find_element(By.ID, "login").send_keys("admin")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 20).until(lambda d: urllib.parse.urlsplit(d.current_url).path == "/apps")
        url = f"{base}/online?app={urllib.parse.quote(app_id)}"
        loads: list[list[float]] = []
        for _ in range(repeat):
            driver.get(url)
            WebDriverWait(driver, 20).until(
                lambda d: d.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd > 0")
            )
            loads.append(
                driver.execute_script(
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "return [n.responseEnd - n.startTime, n.domContentLoadedEventEnd - n.startTime, n.loadEventEnd - n.startTime];"
                )
            )
        rendered = driver.execute_async_script(RENDER_SCRIPT, repeat)
        if "error" in rendered or rendered["rows"] != 100:
            raise RuntimeError(f"the refresh in the browser: {rendered}")
    return [
        ("Online page: the HTML received (navigation start to response end)", [x[0] for x in loads]),
        ("Online page: parsed, styled, admin.js run (DOMContentLoaded end)", [x[1] for x in loads]),
        ("Online page: load event end", [x[2] for x in loads]),
        ("a refresh applied, rows kept (times updated) + layout", rendered["kept"]),
        ("a refresh applied, all 100 rows replaced + layout", rendered["replaced"]),
        ("a whole refresh in the page: fetch, parse, apply, layout", rendered["cycle"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--no-browser", action="store_true", help="skip the measurements in headless Chromium")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.sessions + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.sessions + 1000), hard))  # the server inherits it too
    server = ServerProcess(log_level="Warning")
    app = server.create_app("bench")
    server.start()
    socks: list[socket.socket] = []
    try:
        assert server.proc is not None
        pid = server.proc.pid
        panel = Panel(server.admin_port)
        panel.setup(wait_for(lambda: CODE.findall(server.log())[-1:], what="the set-up code")[0])
        socks = connect_all(server, app, args.sessions, panel)
        a = urllib.parse.quote(app["id"])
        cases = [
            ("Online page, first 100 of all sessions (HTML)", f"/online?app={a}"),
            ("its live refresh, /online.json", f"/online.json?app={a}"),
            ("refresh of the last page", f"/online.json?app={a}&page={-(-args.sessions // 100)}"),
            ("refresh of one base (erp, 70 %)", f"/online.json?app={a}&ib=erp"),
            ("refresh of a search (user0001: 10 users)", f"/online.json?app={a}&q=user0001"),
            ("Online page of that search (HTML)", f"/online?app={a}&q=user0001"),
            ("for comparison: the counts poll, /counts.json", "/counts.json"),
        ]
        print(
            f"\n{args.sessions} sessions, {args.repeat} requests each, one keep-alive connection over loopback; "
            f"{os.cpu_count()} CPUs shared with whatever else runs\n"
        )
        print(f"| {'request':<50} | median ms | p90 ms | server CPU ms | body bytes |")
        print(f"|{'-' * 52}|----------:|-------:|--------------:|-----------:|")
        for label, path in cases:
            r = measure(panel, pid, path, args.repeat)
            print(f"| {label:<50} | {r['median_ms']:9.1f} | {r['p90_ms']:6.1f} | {r['cpu_ms']:13.1f} | {r['bytes']:10,} |", flush=True)
        _, headers, _, _ = panel.request("GET", f"/online.json?app={a}")
        print(f"\n(each answer also carries about {sum(len(k) + len(v) + 4 for k, v in headers.items()) + 17} bytes of headers)")
        if not args.no_browser:
            tries = max(10, args.repeat // 2)
            print(f"\nIn headless Chromium (Selenium), the Online page of all {args.sessions} sessions, {tries} tries each:\n", flush=True)
            print(f"| {'what':<66} | median ms | p90 ms |")
            print(f"|{'-' * 68}|----------:|-------:|")
            for label, values in browser_figures(server.admin_port, app["id"], tries):
                values = sorted(values)
                p90 = values[int(len(values) * 0.9) - 1]
                print(f"| {label:<66} | {statistics.median(values):9.1f} | {p90:6.1f} |", flush=True)
    finally:
        for s in socks:
            s.close()
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
