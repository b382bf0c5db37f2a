"""Options from the command line and the INI file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pns4ones import config
from pns4ones.config import ConfigError, HelpRequested, parse_address, parse_argv, parse_ini


class ArgvTests(SynchronousTestCase):
    def test_manual_forms(self) -> None:
        """/opt value, -opt=value, --opt=value and --opt value all work."""
        opts, pos = parse_argv(
            ["/ssl_mode", "FromStorage", "-listen=localhost", "--log_level=Information", "--service", "*:1", "-data-dir", "/x"]
        )
        self.assertEqual(
            opts, {"ssl_mode": "FromStorage", "listen": "localhost", "log_level": "Information", "service": "*:1", "data_dir": "/x"}
        )
        self.assertEqual(pos, [])

    def test_help(self) -> None:
        """-h, --help and /? ask for help."""
        for flag in ("-h", "--help", "/?"):
            with self.assertRaises(HelpRequested):
                parse_argv([flag])

    def test_unknown_and_missing(self) -> None:
        """An unknown option, or one without its value, is a ConfigError naming it."""
        with self.assertRaises(ConfigError) as ctx:
            parse_argv(["--bogus=1"])
        self.assertIn("bogus", str(ctx.exception))
        with self.assertRaises(ConfigError):
            parse_argv(["--listen"])

    def test_subcommand(self) -> None:
        """Everything after the first positional argument is left to the subcommand."""
        opts, pos = parse_argv(["--data-dir", "d", "admin", "create", "--json", "x"])
        self.assertEqual(opts, {"data_dir": "d"})
        self.assertEqual(pos, ["admin", "create", "--json", "x"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(max_size=12), max_size=6))
    def test_arbitrary_argv(self, argv: list[str]) -> None:
        """Any argv parses into known options with values taken from it and a tail of it as positional arguments, asks for help, or raises a ConfigError naming the command line."""
        try:
            options, positional = parse_argv(argv)
        except HelpRequested:
            self.assertTrue(set(argv) & config.HELP_FLAGS)
            return
        except ConfigError as e:
            self.assertEqual(e.source, "command line")
            self.assertTrue(str(e).startswith("option '"))
            return
        self.assertLessEqual(set(options), set(config.OPTION_BY_NAME))
        self.assertEqual(positional, argv[len(argv) - len(positional) :])
        for value in options.values():
            self.assertTrue(any(value == arg or arg.endswith("=" + value) for arg in argv), value)

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(sorted(config.OPTION_BY_NAME)), st.text(max_size=12), max_size=6), st.data())
    def test_every_form_gives_the_options_back(self, options: dict[str, str], data: st.DataObject) -> None:
        """Options written in any of the manual's forms (/opt v, -opt=v, --opt=v, --opt v; dashes or underscores, any case) parse back to themselves."""
        argv: list[str] = []
        for name, value in options.items():
            spelled = data.draw(st.sampled_from([name, name.replace("_", "-"), name.upper()]))
            form = data.draw(st.sampled_from(["/{} {}", "-{}={}", "--{}={}", "--{} {}"]))
            if " " in form:
                argv += [form.split(" ")[0].format(spelled), value]
            else:
                argv.append(form.format(spelled, value))
        self.assertEqual(parse_argv(argv), (options, []))


class IniTests(SynchronousTestCase):
    def test_manual_example(self) -> None:
        """The manual's example file, 'log level' with a space included, parses."""
        text = "listen=localhost\n; comment\n# another\nssl_mode=FromFileWithPrivateKey\nlog level=Error\nssl_certificate_password = p#ss;word \n"
        values = parse_ini(text, "x.ini")
        self.assertEqual(values["log_level"][0], "Error")
        self.assertEqual(values["ssl_certificate_password"][0], "p#ss;word")
        self.assertEqual(values["listen"][1], "x.ini:1")

    def test_unknown_key(self) -> None:
        """An unknown key names itself, the file and the line."""
        with self.assertRaises(ConfigError) as ctx:
            parse_ini("listen=*\nfoo = 1\n", "/etc/p.ini")
        self.assertIn("foo", str(ctx.exception))
        self.assertIn("/etc/p.ini:2", str(ctx.exception))

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=200))
    def test_arbitrary_text(self, text: str) -> None:
        """Any text parses into known options, each from the line its source names, or raises a ConfigError naming the line at fault."""
        lines = text.splitlines()
        try:
            values = parse_ini(text)
        except ConfigError as e:
            number = int(e.source.removeprefix("<ini>:"))
            line = lines[number - 1].strip().lstrip("\ufeff")
            self.assertTrue(line and line[0] not in ";#", e)
            return
        for name, (_, source) in values.items():
            self.assertIn(name, config.OPTION_BY_NAME)
            self.assertNotEqual(name, "config")
            key = lines[int(source.removeprefix("<ini>:")) - 1].split("=", 1)[0]
            self.assertEqual(config.normalize_name(key.lstrip("\ufeff")), name)

    @settings(max_examples=300, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(sorted(set(config.OPTION_BY_NAME) - {"config"})),
            st.text("abc XYZ 019.:/;#=-_", max_size=12).map(str.strip),
            max_size=6,
        ),
        st.lists(st.sampled_from(["", "; a comment", "# another", "[section]"]), max_size=6),
    )
    def test_written_options_read_back(self, options: dict[str, str], noise: list[str]) -> None:
        """key = value lines among comments, blank lines and sections read back to the same options, each with its line."""
        lines = [*noise[: len(noise) // 2], *(f"{name} = {value}" for name, value in options.items()), *noise[len(noise) // 2 :]]
        values = parse_ini("\n".join(lines), "p.ini")
        self.assertEqual({k: v for k, (v, _) in values.items()}, options)
        for name, (_, source) in values.items():
            self.assertTrue(lines[int(source.removeprefix("p.ini:")) - 1].startswith(name))

    def test_build_layers(self) -> None:
        """The command line wins over the INI file, which wins over defaults."""
        with tempfile.TemporaryDirectory() as d:
            ini = Path(d) / "p.ini"
            ini.write_text("listen = 127.0.0.1:9000\nlog_level = Error\nexpires_in_format = legacy\n")
            cfg = config.build({"config": str(ini), "log_level": "Debug", "data_dir": d})
            self.assertEqual((cfg.listen.hosts, cfg.listen.port), (("127.0.0.1",), 9000))
            self.assertEqual(cfg.log_level, "Debug")
            self.assertEqual(cfg.expires_in_format, "legacy")
            self.assertEqual(cfg.service.port, 36695)
            self.assertEqual(cfg.source_of("listen"), f"{ini}:1")

    def test_bad_value_names_option_and_file(self) -> None:
        """A bad value in the INI file is reported with the option and file:line."""
        with tempfile.TemporaryDirectory() as d:
            ini = Path(d) / "p.ini"
            ini.write_text("log_level = Loud\n")
            with self.assertRaises(ConfigError) as ctx:
                config.build({"config": str(ini), "data_dir": d})
            self.assertIn("log_level", str(ctx.exception))
            self.assertIn(f"{ini}:1", str(ctx.exception))

    def test_missing_config_file(self) -> None:
        """--config naming a missing file is an error."""
        with self.assertRaises(ConfigError):
            config.build({"config": "/nonexistent/p.ini"})

    def test_default_data_dir(self) -> None:
        """Root keeps data in /var/lib/pns4ones, other users in ~/.config/pns4ones."""
        self.assertEqual(config.default_data_dir({}, 0), Path("/var/lib/pns4ones"))
        self.assertEqual(config.default_data_dir({"HOME": "/home/u"}, 1000), Path("/home/u/.config/pns4ones"))
        self.assertEqual(config.default_data_dir({"XDG_CONFIG_HOME": "/x"}, 1000), Path("/x/pns4ones"))


class AddressTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """*, *:PORT, HOST, HOST:PORT, [v6]:PORT, localhost."""
        self.assertEqual(parse_address("*:8092", 1, "listen").port, 8092)
        self.assertEqual(parse_address("192.168.10.3:9062", 1, "listen").hosts, ("192.168.10.3",))
        self.assertEqual(parse_address("127.0.0.1", 36696, "listen").port, 36696)
        a = parse_address("[::1]:8080", 1, "listen")
        self.assertEqual((a.hosts, a.port), (("::1",), 8080))
        self.assertIn("127.0.0.1", parse_address("localhost", 1, "listen").hosts)
        self.assertEqual(parse_address("*", 5, "listen").port, 5)

    def test_network_address_points_to_allow_list(self) -> None:
        """service=192.168.10.0 (the manual's example) is refused with a pointer to service_allow."""
        with self.assertRaises(ConfigError) as ctx:
            parse_address("192.168.10.0", 36695, "service", "service_allow")
        self.assertIn("service_allow=192.168.10.0/24", str(ctx.exception))
        with self.assertRaises(ConfigError):
            parse_address("10.0.0.0/8", 1, "service", "service_allow")

    def test_bad(self) -> None:
        """Bad ports, bad IPs and unresolvable names are refused, never bound to all interfaces."""
        for text in ("*:0", "*:70000", "host:port", "1.2.3.4.5", "[::1", "[zz]:1", "no-such-host.invalid", "::1:80:zz"):
            with self.assertRaises(ConfigError, msg=text):
                parse_address(text, 1, "listen")


class StoreAndHubTests(SynchronousTestCase):
    def test_store_forms(self) -> None:
        """`store` takes sqlite, an absolute sqlite:/// file or a PostgreSQL URL; anything else names the option."""
        data = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, data, True)
        build = lambda v: config.build({"store": v, "data_dir": data}).store  # noqa: E731
        self.assertEqual(build("SQLite"), "sqlite")
        self.assertEqual(build("sqlite:///srv/pns/one.db"), "sqlite:///srv/pns/one.db")
        self.assertEqual(build("postgresql://pns:pw@db:5432/pns4ones"), "postgresql://pns:pw@db:5432/pns4ones")
        for bad in ("sqlite:///relative/../", "mysql://x", "sqlite://relative.db"):
            with self.assertRaises(ConfigError) as caught:
                build(bad)
            self.assertIn("store", str(caught.exception))

    def test_hub_forms(self) -> None:
        """`hub` takes local or a redis:// / rediss:// URL."""
        data = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, data, True)
        build = lambda v: config.build({"hub": v, "data_dir": data}).hub  # noqa: E731
        self.assertEqual(build("Local"), "local")
        self.assertEqual(build("rediss://:pw@cache:6380/2"), "rediss://:pw@cache:6380/2")
        with self.assertRaises(ConfigError):
            build("memcached://x")

    def test_redact_url(self) -> None:
        """Passwords in store and hub URLs never reach logs or messages."""
        from pns4ones.store import redact_url

        self.assertEqual(redact_url("postgresql://pns:s3cret@db:5432/x"), "postgresql://pns:***@db:5432/x")
        self.assertEqual(redact_url("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0")
        self.assertEqual(redact_url("postgresql://db/x"), "postgresql://db/x")
