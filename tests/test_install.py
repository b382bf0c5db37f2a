"""
Packaging and installation: a wheel built with ``python -m build`` installed into a
fresh virtual environment, and ``scripts/install`` / ``scripts/uninstall`` run into a
throwaway root (``--root DIR``), the installed service run as its service user.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase, TestCase

from pns4ones import compiled, config
from pns4ones.inifile import default_ini
from pns4ones_client import Subscriber

from .support import ServerProcess, wait_for, without_id
from .tools import need, require

CHECKOUT = Path(__file__).resolve().parent.parent
INSTALL = CHECKOUT / "scripts" / "install"
UNINSTALL = CHECKOUT / "scripts" / "uninstall"

_wheel: dict[str, Path] = {}


def copy_checkout(dest: Path) -> None:
    """What a build reads of the checkout (src/ without caches, and the packaging files), copied into ``dest``."""
    shutil.copytree(CHECKOUT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "dropin.cache"))
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(CHECKOUT / name, dest / name)


def built_wheel() -> Path:
    """One wheel per test run: ``python -m build --wheel`` on a copy of the checkout."""
    if "path" not in _wheel:
        work = tempfile.TemporaryDirectory(prefix="pns4ones-wheel-")
        atexit.register(work.cleanup)
        src = Path(work.name) / "src"
        src.mkdir()
        copy_checkout(src)
        out = Path(work.name) / "dist"
        result = subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)], capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            raise AssertionError(f"python -m build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        (_wheel["path"],) = out.glob("pns4ones-*.whl")
    return _wheel["path"]


def run(*args: str | Path, check: bool = True, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def env(**locale: str) -> dict[str, str]:
    """This environment with the locale variables replaced by ``locale``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE")}
    return {**clean, **locale}


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def http_post(url: str, token: str, doc: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(doc).encode(), headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def auth_code(base: str, server_key: str) -> int:
    try:
        with urllib.request.urlopen(f"{base}/auth?server_key={server_key}", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


class InstalledServer(ServerProcess):
    """``twistd -n pns4ones`` from another installation, optionally as another user."""

    def __init__(
        self, bin_dir: Path, config_file: Path | None = None, as_user: tuple[int, int] | None = None, journal: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.bin_dir = bin_dir
        self.config_file = config_file or self.ini
        self.as_user = as_user
        self.journal = journal
        os.chmod(self.dir, 0o755)  # the service user's working directory

    def prefix(self) -> list[str]:
        if self.as_user is None:
            return []
        uid, gid = self.as_user
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]

    def command(self) -> list[str]:
        # journal: tell the service its stdout (the log file, open by now) is the journal, as systemd does.
        st = self.log_path.stat() if self.journal else None
        return [
            *(["env", f"JOURNAL_STREAM={st.st_dev}:{st.st_ino}"] if st else []),
            *self.prefix(), str(self.bin_dir / "twistd"), "--nodaemon", "--pidfile=", "pns4ones",
            "--config", str(self.config_file),
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.api_port}",
            "--service", f"127.0.0.1:{self.service_port}",
            "--admin-port", str(self.admin_port),
        ]  # fmt: skip

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            *self.prefix(),
            self.bin_dir / "pns4ones-admin",
            "--config",
            self.config_file,
            "--data-dir",
            self.data_dir,
            *args,
            check=check,
            timeout=60,
        )

    def exercise(self, testcase: TestCase, app: dict[str, str]) -> None:
        """One add-in registration and one send, end to end."""
        sub = Subscriber("127.0.0.1", self.service_port, app["id"], app["client_key"], "ib1", "u1", "", timeout=5).connect()
        testcase.addCleanup(sub.close)
        wait_for(lambda: "subscription registered" in self.log(), what="the registration in the log")
        token = http_json(f"{self.url}/auth?server_key={app['server_key']}")["access_token"]
        report = http_post(
            f"{self.url}/sendmessage",
            token,
            {"Recipient": {"Type": "user", "IbId": "ib1", "UserId": "u1"}, "Message": {"Topic": "installed"}},
        )
        testcase.assertEqual(without_id(report), {"sessions": 1, "users": 1, "stored": False})
        testcase.assertEqual(sub.receive(timeout=5), {"topic": "installed"})
        wait_for(lambda: "send: app=" in self.log(), what="the send in the log")


class DefaultIniTests(SynchronousTestCase):
    def test_default_ini_sets_data_dir_and_level_only(self) -> None:
        """The installed INI parses, sets data_dir and log_level, and leaves every other option at its default."""
        with tempfile.TemporaryDirectory() as tmp:
            ini = Path(tmp) / "pns4ones.ini"
            ini.write_text(default_ini())
            installed = config.build({"config": str(ini)})
            plain = config.build({"data_dir": "/var/lib/pns4ones", "log_level": "Information"})
        self.assertEqual(installed.data_dir, Path("/var/lib/pns4ones"))
        self.assertEqual(installed.log_level, "Information")
        self.assertEqual(installed, dataclasses.replace(plain, config_file=str(ini)))
        for opt in config.OPTIONS:
            if opt.name != "config":
                self.assertIn(opt.name, default_ini())

    def test_service_user_defaults_to_system_data_dir(self) -> None:
        """The owner of /var/lib/pns4ones (the service user) gets it as default data_dir; other users keep ~/.config."""
        with tempfile.TemporaryDirectory() as tmp:
            system = Path(tmp) / "var-lib-pns4ones"
            system.mkdir()
            self.patch(config, "SYSTEM_DATA_DIR", system)
            owner = system.stat().st_uid
            env = {"HOME": "/home/someone"}
            self.assertEqual(config.default_data_dir(env, euid=owner), system)
            self.assertEqual(config.default_data_dir(env, euid=owner + 4242), Path("/home/someone/.config/pns4ones"))

    def test_a_system_ini_closed_to_the_user_is_not_his(self) -> None:
        """A user who cannot read the installed service's INI (in its 0700 directory) gets the defaults, not a PermissionError."""
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)
            closed = Path(tmp) / "etc-pns4ones"
            closed.mkdir()
            (closed / "pns4ones.ini").write_text("log_level = Debug\n")
            code = (
                "import sys; from pathlib import Path; from pns4ones import config; config.SYSTEM_CONFIG = Path(sys.argv[1]); "
                "c = config.build({'data_dir': sys.argv[2]}); print(repr(c.config_file), c.log_level)"
            )
            if os.geteuid() == 0:  # root reads everything: ask as nobody, with Debian's python and this checkout's src/
                os.chmod(closed, 0o700)
                command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "/usr/bin/python3"]
                environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(CHECKOUT / "src")}
                require("setpriv")
            else:
                os.chmod(closed, 0)
                command, environment = [sys.executable], dict(os.environ)
            try:
                result = run(*command, "-c", code, closed / "pns4ones.ini", tmp, env=environment, check=False)
            finally:
                os.chmod(closed, 0o700)  # for the temporary directory's removal
        self.assertEqual((result.returncode, result.stdout.strip(), result.stderr), (0, "'' Warning", ""))


class WheelTests(TestCase):
    """The wheel from ``python -m build``, pip-installed into a fresh virtual environment."""

    wheel: Path
    tmp: tempfile.TemporaryDirectory[str]
    venv: Path

    @classmethod
    def setUpClass(cls) -> None:
        cls.wheel = built_wheel()
        cls.tmp = tempfile.TemporaryDirectory(prefix="pns4ones-venv-")
        cls.venv = Path(cls.tmp.name) / "venv"
        # Fresh and empty (no pip of its own: the test's pip installs into it, which saves ensurepip's time).
        run(sys.executable, "-m", "venv", "--without-pip", cls.venv)
        run(
            sys.executable,
            "-m",
            "pip",
            "--python",
            cls.venv / "bin" / "python",
            "install",
            "--disable-pip-version-check",
            "--no-compile",
            "-q",
            cls.wheel,
        )

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def test_wheel_holds_the_plugin_and_no_twisted_package_files(self) -> None:
        """The wheel has twisted/plugins/pns4ones_plugin.py and the schema, and no twisted/__init__.py that would shadow Twisted."""
        names = set(zipfile.ZipFile(self.wheel).namelist())
        self.assertIn("twisted/plugins/pns4ones_plugin.py", names)
        self.assertIn("pns4ones/store/schema/001_initial.sql", names)
        self.assertFalse({"twisted/__init__.py", "twisted/plugins/__init__.py"} & names)
        self.assertEqual({n.split("/")[0] for n in names if not n.startswith("pns4ones-")}, {"pns4ones", "twisted"})

    def test_wheel_holds_the_send_path_compiled_and_its_source(self) -> None:
        """Each module of the send path is in the wheel as its .py and, built with a C compiler here, compiled beside it."""
        require("gcc", "python3-dev")
        names = set(zipfile.ZipFile(self.wheel).namelist())
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        for module in compiled.HOT:
            path = module.replace(".", "/")
            self.assertIn(f"{path}.py", names)
            self.assertIn(f"{path}{suffix}", names)
        self.assertFalse({n for n in names if n.endswith(".c")})  # (Cython's C files stay in build/)
        state = run(self.venv / "bin" / "python", "-m", "pns4ones.compiled", timeout=60).stdout
        self.assertEqual(state.splitlines()[-1], "send path: compiled")

    def test_twistd_finds_the_plugin(self) -> None:
        """After a plain wheel install, twistd lists pns4ones and 'twistd pns4ones -h' prints its options."""
        listing = run(self.venv / "bin" / "twistd", "--help").stdout
        self.assertIn("pns4ones", listing)
        self.assertIn("Push notifications for 1C:Enterprise", listing)
        help_text = run(self.venv / "bin" / "twistd", "pns4ones", "-h").stdout
        self.assertIn("Usage: twistd -n pns4ones", help_text)
        self.assertIn("--service_allow", help_text)

    def test_full_start_from_the_wheel(self) -> None:
        """The wheel-installed service starts, registers an add-in, delivers a send, logs both at Information and stops cleanly."""
        server = InstalledServer(self.venv / "bin", ini="log_level = Information\n")
        self.addCleanup(server.cleanup)
        app = server.create_app("from the wheel")
        server.start()
        self.assertIn("1 applications in the store", server.log())
        server.exercise(self, app)
        self.assertRegex(server.log(), r"(?m)^\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4} \[pns4ones\.api\.\w+#info\] send: app=")
        self.assertEqual(server.stop(), 0)  # a graceful stop on SIGTERM exits 0
        self.assertIn("stopping: closing listeners", server.log())


class EditableInstallTests(SynchronousTestCase):
    """``pip install -e .``, what a Python developer types first, in a fresh virtual environment."""

    def test_twistd_finds_the_plugin_of_an_editable_install(self) -> None:
        """After pip install -e of a copy of the checkout, twistd pns4ones --help works and a module added to src/ imports without reinstalling."""
        work = tempfile.TemporaryDirectory(prefix="pns4ones-editable-")
        self.addCleanup(work.cleanup)
        tmp = Path(work.name)
        checkout, venv = tmp / "checkout", tmp / "venv"
        copy_checkout(checkout)
        run(sys.executable, "-m", "venv", "--without-pip", venv)
        # The test's own pip installs into it (no ensurepip); dependencies come from pip's cache.
        run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--disable-pip-version-check", "-q",
            "-e", checkout, timeout=300)  # fmt: skip
        help_text = run(venv / "bin" / "twistd", "pns4ones", "--help", timeout=60).stdout
        self.assertIn("Usage: twistd -n pns4ones", help_text)
        self.assertIn("--service_allow", help_text)
        (checkout / "src" / "pns4ones" / "_editable_probe.py").write_text("WHERE = __file__\n")
        where = run(venv / "bin" / "python", "-c", "from pns4ones import _editable_probe; print(_editable_probe.WHERE)", timeout=60).stdout
        self.assertEqual(where.strip(), str(checkout / "src" / "pns4ones" / "_editable_probe.py"))
        # Nothing compiled: the source runs as edited (setup.py skips the compiled send path in editable mode).
        state = run(venv / "bin" / "python", "-m", "pns4ones.compiled", check=False, timeout=60)
        self.assertEqual((state.returncode, state.stdout.splitlines()[-1]), (1, "send path: pure"))
        self.assertEqual(list(checkout.rglob("*.so")), [])


class RebuildTests(SynchronousTestCase):
    """A developer's reinstall from a checkout whose build/ keeps an earlier build's results."""

    def test_a_module_that_no_longer_compiles_is_built_pure(self) -> None:
        """Built once, then broken for Cython: the module's compiled copy from the first build leaves build/, with a warning, and is not installed in its place."""
        require("gcc", "python3-dev")
        work = tempfile.TemporaryDirectory(prefix="pns4ones-rebuild-")
        self.addCleanup(work.cleanup)
        checkout = Path(work.name)
        copy_checkout(checkout)
        listing = checkout / "src" / "pns4ones" / "compiled.py"  # (one small module, to keep the test short)
        text = listing.read_text()
        start = text.index("HOT: Final = (")
        listing.write_text(text[:start] + 'HOT: Final = ("pns4ones.wire",)' + text[text.index(")", start) + 1 :])
        target = checkout / "installed"
        install = [sys.executable, "-m", "pip", "install", "-v", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
                   "--target", target, checkout]  # fmt: skip
        first = run(*install, timeout=300)
        self.assertNotIn("was not compiled", first.stdout + first.stderr)
        (copy,) = (checkout / "build").glob("lib*/pns4ones/wire.*.so")
        self.assertEqual(len(list(target.glob("pns4ones/wire.*.so"))), 1)
        (checkout / "src" / "pns4ones" / "wire.pxd").write_text("cdef class:\n")  # (not Cython)
        shutil.rmtree(target)
        again = run(*install, timeout=300)
        self.assertIn("was not compiled", again.stdout + again.stderr)
        self.assertFalse(copy.exists(), "the first build's copy is gone from build/")
        self.assertEqual(list(target.glob("pns4ones/*.so")), [])
        state = run(sys.executable, "-m", "pns4ones.compiled", check=False, cwd=target, timeout=60).stdout
        self.assertIn("pns4ones.wire: pure", state)


def _need_root_install() -> None:
    if os.geteuid() != 0:
        raise SkipTest("scripts/install needs root (chown to the service user), even with --root")
    require("python3-venv", "useradd", "setpriv")


class InstalledRoot(TestCase):
    """
    ``scripts/install --root DIR --no-start`` once per class, into a throwaway root of
    the class's own: the installs are slow, and two classes with a root each run side by
    side in pytest-xdist workers.
    """

    tmp: tempfile.TemporaryDirectory[str]
    root: Path
    first: str
    first_ini: str
    uid: int
    gid: int
    etc: Path
    var: Path
    bin: Path

    @classmethod
    def setUpClass(cls) -> None:
        _need_root_install()
        cls.tmp = tempfile.TemporaryDirectory(prefix="pns4ones-root-")
        os.chmod(cls.tmp.name, 0o755)  # the service user walks down to its files
        cls.root = Path(cls.tmp.name) / "root"
        cls.first = run("bash", INSTALL, "--root", cls.root, "--wheel", built_wheel(), "--no-start").stdout
        cls.first_ini = (cls.root / "etc/pns4ones/pns4ones.ini").read_text()
        entry = next(line.split(":") for line in (cls.root / "etc/passwd").read_text().splitlines() if line.startswith("pns4ones:"))
        cls.uid, cls.gid = int(entry[2]), int(entry[3])
        cls.etc = cls.root / "etc/pns4ones"
        cls.var = cls.root / "var/lib/pns4ones"
        cls.bin = cls.root / "opt/pns4ones/venv/bin"

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def old_layout(self, name: str, data_dir: str = "/etc/pns4ones") -> Path:
        """
        A copy of the installed root as an install from before /var/lib/pns4ones:
        the INI says ``data_dir = /etc/pns4ones`` and the store, admin.json and a
        control file are there, beside TLS files and a password file the INI names.
        """
        copy = Path(self.tmp.name) / name
        shutil.copytree(self.root, copy, symlinks=True, ignore=lambda d, names: names if Path(d).parent.name == "releases" else [])
        self.addCleanup(shutil.rmtree, copy, True)
        shutil.rmtree(copy / "var/lib/pns4ones")
        etc = copy / "etc/pns4ones"
        for path in [etc, *etc.rglob("*")]:  # as the old installer left it: all the service user's (copytree made it root's)
            os.chown(path, self.uid, self.gid, follow_symlinks=False)
        ini = etc / "pns4ones.ini"
        text = ini.read_text().replace("data_dir = /var/lib/pns4ones", f"data_dir = {data_dir}")
        ini.write_text(text + "; an operator's note\nstore_password_file = /etc/pns4ones/pgpass\n")
        run(self.bin / "pns4ones-admin", "--data-dir", etc, "create", "from the old layout")
        for relative, mode in (
            ("admin.json", 0o600),
            ("restart.json", 0o644),
            ("pgpass", 0o600),
            ("push.key", 0o600),
            ("tls/fullchain.pem", 0o644),
        ):
            path = etc / relative
            path.parent.mkdir(exist_ok=True)
            path.write_text(f"{relative}\n")
            os.chmod(path, mode)
            os.chown(path, self.uid, self.gid)
        os.chmod(etc / "pns4ones.db", 0o640)
        return copy

    @staticmethod
    def snapshot(directory: Path) -> dict[str, tuple[int, int, int, bytes]]:
        """Every file under ``directory``: mode, owner, group, bytes."""
        out = {}
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                st = path.stat()
                out[str(path.relative_to(directory))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, path.read_bytes())
        return out


class InstallTests(InstalledRoot):
    """``scripts/install --root DIR --no-start``: files, modes, the unit, a reinstall, a refused upgrade, uninstall."""

    def test_user_directories_and_modes(self) -> None:
        """A system user with no login; /etc/pns4ones and /var/lib/pns4ones 0700 and the INI 0600, all the user's; code root-owned and readable."""
        _, _, uid, gid, _, _, shell = next(
            line.split(":") for line in (self.root / "etc/passwd").read_text().splitlines() if line.startswith("pns4ones:")
        )
        self.assertLess(int(uid), 1000)
        self.assertEqual(shell, "/usr/sbin/nologin")
        self.assertIn(f"pns4ones:x:{gid}:", (self.root / "etc/group").read_text())
        for path, mode in ((self.etc, 0o700), (self.etc / "pns4ones.ini", 0o600), (self.var, 0o700)):
            st = path.stat()
            self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), (mode, self.uid, self.gid), path)
        self.assertEqual(self.first_ini, default_ini())
        ini = config.parse_ini(self.first_ini)
        self.assertEqual({k: v for k, (v, _) in ini.items()}, {"data_dir": "/var/lib/pns4ones", "log_level": "Information"})
        self.assertEqual(sorted(p.name for p in self.etc.iterdir()), ["pns4ones.ini"])
        venv = self.root / "opt/pns4ones/venv"
        self.assertTrue(venv.is_symlink())
        self.assertTrue(os.readlink(venv).startswith("releases/"))
        twistd = self.bin / "twistd"
        self.assertEqual(twistd.stat().st_uid, 0)
        self.assertTrue(twistd.stat().st_mode & stat.S_IXOTH)
        self.assertEqual(os.readlink(self.root / "usr/local/bin/pns4ones-admin"), "/opt/pns4ones/venv/bin/pns4ones-admin")
        self.assertIn('pns4ones-admin create "1C server"', self.first)
        self.assertIn("http://127.0.0.1:36697/", self.first)
        self.assertIn("(new, commented defaults)", self.first)

    def test_plugin_cache_written_at_install(self) -> None:
        """The install writes twistd's dropin.cache, newer than the plugin, so the service user never has to."""
        (plugins,) = (venv_lib for venv_lib in (self.root / "opt/pns4ones/venv/lib").glob("python3*/site-packages/twisted/plugins"))
        cache = plugins / "dropin.cache"
        self.assertTrue(cache.exists())
        self.assertGreaterEqual(cache.stat().st_mtime, (plugins / "pns4ones_plugin.py").stat().st_mtime)
        self.assertTrue(cache.stat().st_mode & stat.S_IROTH)

    def test_unit_file(self) -> None:
        """The unit runs twistd -n pns4ones as pns4ones, restarts on failure, writes only /var/lib/pns4ones, is hardened and enabled for multi-user.target."""
        unit_path = self.root / "etc/systemd/system/pns4ones.service"
        self.assertEqual(stat.S_IMODE(unit_path.stat().st_mode), 0o644)
        lines = set(unit_path.read_text().splitlines())
        for line in (
            "User=pns4ones",
            "ExecStart=/opt/pns4ones/venv/bin/twistd --nodaemon --pidfile= pns4ones --config /etc/pns4ones/pns4ones.ini",
            "Restart=on-failure",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "StateDirectory=pns4ones",
            "StateDirectoryMode=0700",
            "PrivateTmp=yes",
            "ProtectHome=yes",
            "CapabilityBoundingSet=",
            "WantedBy=multi-user.target",
        ):
            self.assertIn(line, lines)
        self.assertFalse([line for line in lines if line.startswith("ReadWritePaths=")])
        wants = self.root / "etc/systemd/system/multi-user.target.wants/pns4ones.service"
        self.assertEqual(os.readlink(wants), "/etc/systemd/system/pns4ones.service")

    def test_systemd_analyze_verify(self) -> None:
        """systemd-analyze verify accepts the installed unit with no warning (ExecStart resolved inside the root); its exposure score is at most 2."""
        analyze = need("systemd-analyze")
        # verify --root needs the stock units (sysinit.target, ...) inside the root.
        units = self.root / "usr/lib/systemd/system"
        if not units.exists():
            shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
        result = run(analyze, "verify", f"--root={self.root}", "/etc/systemd/system/pns4ones.service", check=False)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))
        # The hardening, as systemd scores it (0 = locked down, 10 = exposed): at most 2.0, "OK" (--threshold counts tenths).
        result = run(analyze, "security", "--offline=yes", f"--root={self.root}", "--threshold=20", "pns4ones.service", check=False)
        self.assertEqual(result.returncode, 0, result.stdout[-2000:] + result.stderr)
        self.assertIn("Overall exposure level for pns4ones.service", result.stdout)
        # The same check fails when ExecStart does not exist: the verification is real.
        broken = self.root / "etc/systemd/system/pns4ones-broken.service"
        broken.write_text(
            (self.root / "etc/systemd/system/pns4ones.service").read_text().replace("/venv/bin/twistd", "/venv/bin/no-such-twistd")
        )
        self.addCleanup(broken.unlink)
        result = run(analyze, "verify", f"--root={self.root}", "/etc/systemd/system/pns4ones-broken.service", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no-such-twistd", result.stderr)

    def test_service_and_admin_as_the_service_user(self) -> None:
        """Admin as root and as pns4ones share one store owned by pns4ones; the service runs as pns4ones with the installed INI and logs registrations and sends."""
        data = self.var
        server = InstalledServer(
            self.bin, config_file=self.etc / "pns4ones.ini", as_user=(self.uid, self.gid), journal=True, data_dir=str(data)
        )
        self.addCleanup(server.cleanup)
        as_root = run(self.bin / "pns4ones-admin", "--config", self.etc / "pns4ones.ini", "--data-dir", data, "create", "by root", "--json")
        app = json.loads(as_root.stdout)
        for path in data.iterdir():
            self.assertEqual((path.stat().st_uid, path.stat().st_gid), (self.uid, self.gid), path)
        via_twistd = run(
            self.bin / "twistd",
            "pns4ones",
            "--config",
            self.etc / "pns4ones.ini",
            "--data-dir",
            data,
            "admin",
            "create",
            "via twistd",
            "--json",
            check=False,
        )
        self.assertEqual(via_twistd.returncode, 0, via_twistd.stderr)
        self.assertEqual((data / "pns4ones.db").stat().st_uid, self.uid)
        listed = json.loads(server.admin("list", "--json").stdout)
        self.assertIn(app["id"], [a["id"] for a in listed])
        server.start()
        server.exercise(self, app)
        also = json.loads(run(self.bin / "pns4ones-admin", "--data-dir", data, "create", "while running", "--json").stdout)
        wait_for(lambda: auth_code(server.url, also["server_key"]) == 200, what="the running service to see root's new application")
        for path in data.iterdir():  # -wal and -shm too, made while root and the service both had it open
            self.assertEqual(path.stat().st_uid, self.uid, path)
        log = server.log()
        # journald's priority prefixes, no timestamps of our own (the journal has them).
        self.assertRegex(log, r"(?m)^<6>\[pns4ones\.transports\.addin\.\w+#info\] subscription registered: ")
        self.assertRegex(log, r"(?m)^<6>\[pns4ones\.api\.\w+#info\] send: app=")
        self.assertEqual([line for line in log.splitlines() if not line.startswith("<")], [])
        self.assertNotIn("Unable to write to plugin cache", log)
        self.assertNotIn("Traceback", log)
        self.assertEqual(server.stop(), 0)

    def test_reinstall_from_checkout_keeps_config_and_store(self) -> None:
        """Installing again (from the checkout) upgrades the code in a new release and keeps INI and store byte for byte."""
        ini = self.etc / "pns4ones.ini"
        with open(ini, "a") as f:
            f.write("; an operator's note\nlisten = 127.0.0.1:46696\n")
        run(self.bin / "pns4ones-admin", "--data-dir", self.var, "create", "kept")
        before = {p: p.read_bytes() for d in (self.etc, self.var) for p in d.iterdir()}
        release = os.readlink(self.root / "opt/pns4ones/venv")
        # (PNS4ONES_PURE: this test is about the files kept; the wheel's tests cover the compiled build.)
        output = run("bash", INSTALL, "--root", self.root, "--no-start", env=env(PNS4ONES_PURE="1")).stdout
        self.assertEqual({p: p.read_bytes() for d in (self.etc, self.var) for p in d.iterdir()}, before)
        self.assertIn("(kept)", output)
        self.assertIn("upgrade; previous release kept", output)
        now = os.readlink(self.root / "opt/pns4ones/venv")
        self.assertNotEqual(now, release)
        self.assertEqual(
            sorted(p.name for p in (self.root / "opt/pns4ones/releases").iterdir()), sorted([release.split("/")[-1], now.split("/")[-1]])
        )
        self.assertEqual(stat.S_IMODE(self.etc.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(self.var.stat().st_mode), 0o700)
        self.assertEqual(sum(line.startswith("pns4ones:") for line in (self.root / "etc/passwd").read_text().splitlines()), 1)
        self.assertIn("kept", run(self.bin / "pns4ones-admin", "--data-dir", self.var, "list").stdout)

    def test_upgrade_refused_when_new_code_rejects_the_configuration(self) -> None:
        """An install over a configuration the new code refuses stops with the reason and changes nothing."""
        copy = Path(self.tmp.name) / "refused"
        shutil.copytree(self.root, copy, symlinks=True, ignore=lambda d, names: names if Path(d).parent.name == "releases" else [])
        self.addCleanup(shutil.rmtree, copy, True)
        ini = copy / "etc/pns4ones/pns4ones.ini"
        ini.write_text(ini.read_text() + "service = 192.168.10.0\n")
        before = {p.name: p.read_bytes() for p in ini.parent.iterdir()}
        releases = sorted(p.name for p in (copy / "opt/pns4ones/releases").iterdir())
        current = os.readlink(copy / "opt/pns4ones/venv")
        result = run("bash", INSTALL, "--root", copy, "--wheel", built_wheel(), "--no-start", check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("refuses", result.stderr)
        self.assertIn("service_allow=192.168.10.0/24", result.stderr)
        self.assertIn("Nothing was changed", result.stderr)
        self.assertEqual({p.name: p.read_bytes() for p in ini.parent.iterdir()}, before)
        self.assertEqual(sorted(p.name for p in (copy / "opt/pns4ones/releases").iterdir()), releases)
        self.assertEqual(os.readlink(copy / "opt/pns4ones/venv"), current)

    def test_uninstall_keeps_data_unless_purge(self) -> None:
        """uninstall removes unit, code and admin link but keeps /etc/pns4ones, /var/lib/pns4ones and the user; --purge removes those too."""
        copy = Path(self.tmp.name) / "copy"
        # The code's files do not matter to uninstall: copy the tree without them.
        shutil.copytree(self.root, copy, symlinks=True, ignore=lambda d, names: names if Path(d).parent.name == "releases" else [])
        self.addCleanup(shutil.rmtree, copy, True)
        run(self.bin / "pns4ones-admin", "--data-dir", copy / "var/lib/pns4ones", "create", "to keep")
        kept = ("etc/pns4ones", "var/lib/pns4ones")
        before = {p: p.read_bytes() for d in kept for p in (copy / d).iterdir()}
        self.assertIn(copy / "var/lib/pns4ones/pns4ones.db", before)
        output = run("bash", UNINSTALL, "--root", copy).stdout
        self.assertIn("Kept /etc/pns4ones (configuration), /var/lib/pns4ones (data)", output)
        for gone in (
            "etc/systemd/system/pns4ones.service",
            "etc/systemd/system/multi-user.target.wants/pns4ones.service",
            "opt/pns4ones",
            "usr/local/bin/pns4ones-admin",
        ):
            self.assertFalse(os.path.lexists(copy / gone), gone)
        self.assertEqual({p: p.read_bytes() for d in kept for p in (copy / d).iterdir()}, before)
        self.assertIn("pns4ones:", (copy / "etc/passwd").read_text())
        run("bash", UNINSTALL, "--root", copy, "--purge")
        self.assertFalse((copy / "etc/pns4ones").exists())
        self.assertFalse((copy / "var/lib/pns4ones").exists())
        self.assertNotIn("pns4ones:", (copy / "etc/passwd").read_text())
        self.assertNotIn("pns4ones:", (copy / "etc/group").read_text())


class UpgradeTests(InstalledRoot):
    """An upgrade over an install that kept its data in /etc/pns4ones (or in both places, or chose its own data_dir)."""

    def test_upgrade_moves_the_data_from_etc_once(self) -> None:
        """An upgrade of an install that kept its data in /etc/pns4ones moves it to /var/lib/pns4ones (owners, modes and bytes kept), changes only the INI's data_dir line, leaves configuration files; a second install moves nothing."""
        copy = self.old_layout("old-layout")
        etc, var = copy / "etc/pns4ones", copy / "var/lib/pns4ones"
        before = self.snapshot(etc)
        data = {"pns4ones.db", "admin.json", "restart.json", "secrets.key"}  # secrets.key: made by create, seals the store
        self.assertLessEqual(data, set(before))
        configuration = {"pns4ones.ini", "pgpass", "push.key", "tls/fullchain.pem"}
        output = run("bash", INSTALL, "--root", copy, "--wheel", built_wheel(), "--no-start", env=env(LANG="C.UTF-8")).stdout
        after_etc, after_var = self.snapshot(etc), self.snapshot(var)
        self.assertEqual(set(after_etc), configuration)
        self.assertEqual(set(after_var), set(before) - configuration)
        for name in set(before) - configuration:
            self.assertEqual(after_var[name], before[name], name)
        for name in configuration - {"pns4ones.ini"}:
            self.assertEqual(after_etc[name], before[name], name)
        self.assertRegex(
            output, r"data: +/var/lib/pns4ones \(readable by pns4ones and root only\); moved from /etc/pns4ones: admin.json pns4ones.db"
        )
        old_ini, new_ini = before["pns4ones.ini"], after_etc["pns4ones.ini"]
        self.assertEqual(old_ini[:3], new_ini[:3])  # mode, owner, group
        changed = [(a, b) for a, b in zip(old_ini[3].decode().splitlines(), new_ini[3].decode().splitlines()) if a != b]
        self.assertEqual(changed, [("data_dir = /etc/pns4ones", "data_dir = /var/lib/pns4ones")])
        self.assertEqual(stat.S_IMODE(var.stat().st_mode), 0o700)
        self.assertEqual((var.stat().st_uid, var.stat().st_gid), (self.uid, self.gid))
        listed = run(self.bin / "pns4ones-admin", "--config", etc / "pns4ones.ini", "--data-dir", var, "list").stdout
        self.assertIn("from the old layout", listed)
        # Once: the next install finds nothing to move and changes nothing (its messages in Russian this time).
        state = (self.snapshot(etc), self.snapshot(var))
        again = run("bash", INSTALL, "--root", copy, "--wheel", built_wheel(), "--no-start", env=env(LANG="ru_RU.UTF-8")).stdout
        self.assertEqual((self.snapshot(etc), self.snapshot(var)), state)
        self.assertNotIn("перенесены", again)
        self.assertIn("установлен", again)
        self.assertIn("systemctl reload pns4ones             # применить изменение настроек или обновление", again)

    def test_upgrade_rewrites_an_edited_data_dir_line(self) -> None:
        """An INI edited on Windows (CRLF) that spells it 'data-dir = "/etc/pns4ones/"': that line alone changes, its quotes and CR kept."""
        copy = self.old_layout("crlf")
        ini = copy / "etc/pns4ones/pns4ones.ini"
        text = ini.read_text().replace("data_dir = /etc/pns4ones", 'data-dir = "/etc/pns4ones/"').replace("\n", "\r\n")
        ini.write_bytes(text.encode())
        run("bash", INSTALL, "--root", copy, "--wheel", built_wheel(), "--no-start", env=env(LANG="C.UTF-8"))
        after = ini.read_bytes().decode()
        self.assertEqual(after, text.replace('data-dir = "/etc/pns4ones/"\r\n', 'data-dir = "/var/lib/pns4ones"\r\n'))
        self.assertTrue((copy / "var/lib/pns4ones/pns4ones.db").is_file())

    def test_upgrade_leaves_an_operators_own_data_dir(self) -> None:
        """An INI naming its own data_dir (not /etc/pns4ones): the install moves nothing and keeps the INI byte for byte."""
        copy = self.old_layout("own-data-dir", data_dir="/srv/pns4ones")
        etc = copy / "etc/pns4ones"
        before = self.snapshot(etc)
        output = run("bash", INSTALL, "--root", copy, "--wheel", built_wheel(), "--no-start", env=env(LANG="C.UTF-8")).stdout
        self.assertEqual(self.snapshot(etc), before)
        self.assertNotIn("moved from", output)

    def test_upgrade_refuses_to_overwrite_data_in_var_lib(self) -> None:
        """A store in both /etc/pns4ones and /var/lib/pns4ones: the install stops, names both, and changes nothing."""
        copy = self.old_layout("both-stores")
        etc, var = copy / "etc/pns4ones", copy / "var/lib/pns4ones"
        var.mkdir(parents=True)
        (var / "pns4ones.db").write_text("another store\n")
        before = (self.snapshot(etc), self.snapshot(var), os.readlink(copy / "opt/pns4ones/venv"))
        result = run("bash", INSTALL, "--root", copy, "--wheel", built_wheel(), "--no-start", check=False, env=env(LANG="C.UTF-8"))
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{etc}/pns4ones.db and {var}/pns4ones.db both exist", result.stderr)
        self.assertIn("Nothing was changed", result.stderr)
        self.assertEqual((self.snapshot(etc), self.snapshot(var), os.readlink(copy / "opt/pns4ones/venv")), before)
