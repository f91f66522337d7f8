import re

import pytest

from proxy.flags import (
    FlagParser,
    default_note,
    env_default,
    format_duration,
    parse_bool,
    parse_duration,
    parse_int,
    split_list,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("+0", 0.0),
        ("0s", 0.0),
        ("30s", 30.0),
        ("+5s", 5.0),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("1m30s", 90.0),
        ("1h1m1s", 3661.0),
        ("500ms", 0.5),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("0.3s", 0.3),
        ("1ms500us", 0.0015),
        ("10ns", 1e-8),
        ("1us", 1e-6),
        ("1µs", 1e-6),  # U+00B5 micro sign
        ("1μs", 1e-6),  # U+03BC greek mu
    ],
)
def test_parse_duration_valid(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10",
        "1x",
        "s",
        "1s2",
        "-1s",
        "-0",
        ".s",
        "1.2.3s",
        "1 s",
        " 1s",
        "1S",
        "1sec",
        "1d",
        "٣s",
        "+",
        "+-1s",
    ],
)
def test_parse_duration_invalid(text):
    with pytest.raises(ValueError, match=re.escape(f'invalid duration "{text}"')):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (30, "30s"),
        (90, "1m30s"),
        (0.5, "500ms"),
        (3600, "1h0m0s"),
        (3661, "1h1m1s"),
        (0, "0s"),
        (1.5, "1.5s"),
        (0.0005, "500µs"),
        (0.0000015, "1.5µs"),
        (0.0015, "1.5ms"),
        (1e-8, "10ns"),
        (60, "1m0s"),
        (5400.25, "1h30m0.25s"),
        (-1.5, "-1.5s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["30s", "1m30s", "500ms", "1h0m0s", "1.5s", "500µs", "10ns"])
def test_format_duration_round_trips(text):
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_parse_bool_true(text):
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_parse_bool_false(text):
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "yes", "no", "on", "tRUE", "2", " true"])
def test_parse_bool_invalid(text):
    with pytest.raises(ValueError, match=re.escape(f'invalid boolean "{text}"')):
        parse_bool(text)


@pytest.mark.parametrize(("text", "value"), [("80", 80), ("0", 0), ("+8", 8), ("-3", -3), ("007", 7)])
def test_parse_int(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1.5", " 80", "8_0", "0x10", "٣"])
def test_parse_int_invalid(text):
    with pytest.raises(ValueError, match=re.escape(f'invalid integer "{text}"')):
        parse_int(text)


@pytest.mark.parametrize(
    ("values", "items"),
    [
        (["a"], ["a"]),
        (["a.com,b.com", "c.com"], ["a.com", "b.com", "c.com"]),
        (["c", "a,b"], ["c", "a", "b"]),
        ([""], []),
        (["a", "", "b"], ["a", "b"]),
        (['"x,y",z'], ["x,y", "z"]),
        (['"say ""hi"""'], ['say "hi"']),
        (["a, b"], ["a", " b"]),
        ([","], ["", ""]),
        ([], []),
    ],
)
def test_split_list(values, items):
    assert split_list(values) == items


def test_split_list_rejects_broken_quotes():
    with pytest.raises(ValueError, match=re.escape('invalid list ""a,b"')):
        split_list(['"a,b'])


def test_env_default_prefers_prefixed(monkeypatch):
    monkeypatch.delenv("KAMAL_PROXY_HTTP_PORT", raising=False)
    monkeypatch.setenv("HTTP_PORT", "81")
    assert env_default("HTTP_PORT") == "81"
    monkeypatch.setenv("KAMAL_PROXY_HTTP_PORT", "83")
    assert env_default("HTTP_PORT") == "83"
    monkeypatch.setenv("PYPROXY_HTTP_PORT", "82")
    assert env_default("HTTP_PORT") == "82"
    monkeypatch.setenv("PYPROXY_HTTP_PORT", "")
    assert env_default("HTTP_PORT") == ""
    assert env_default("HTTP_PORT", prefixes=("OTHER_",)) == "81"


def test_env_default_unset(monkeypatch):
    monkeypatch.delenv("HTTP_PORT", raising=False)
    monkeypatch.delenv("PYPROXY_HTTP_PORT", raising=False)
    monkeypatch.delenv("KAMAL_PROXY_HTTP_PORT", raising=False)
    assert env_default("HTTP_PORT") is None


@pytest.mark.parametrize(
    ("value", "note"),
    [
        (30.0, " (default 30s)"),
        (True, " (default true)"),
        (80, " (default 80)"),
        ("/up", ' (default "/up")'),
        (False, ""),
        (0, ""),
        (0.0, ""),
        ("", ""),
        ([], ""),
    ],
)
def test_default_note(value, note):
    assert default_note(value) == note


def deploy_parser():
    p = FlagParser(prog="pyproxy deploy", description="Deploy a service")
    p.add_argument("service")
    p.add_list("--target", required=True, help="Target host(s)")
    p.add_list("--host", help="Host(s) to serve")
    p.add_bool("--strip-path-prefix", default=True, help="Strip the path prefix")
    p.add_bool("--force", help="Skip health checks")
    p.add_bool("--tls")
    p.add_duration("--deploy-timeout", default=30, help="Deploy timeout")
    p.add_duration("--drain-timeout", default=30.0)
    p.add_duration("--health-check-interval", default=1.0)
    p.add_int("--max-request-body")
    p.add_str("--health-check-path", default="/up", help="Health check path")
    return p


def test_kamal_style_invocation():
    p = deploy_parser()
    ns = p.parse_args(
        [
            "web",
            "--target=web-2:3000",
            "--host=a.com,b.com",
            "--host=c.com",
            "--deploy-timeout=30s",
            "--drain-timeout=500ms",
            "--force",
            "--strip-path-prefix=false",
            "--health-check-interval",
            "1s",
            "--health-check-path=/health",
            "--max-request-body=1024",
        ]
    )
    assert ns.service == "web"
    assert ns.target == ["web-2:3000"]
    assert ns.host == ["a.com", "b.com", "c.com"]
    assert ns.deploy_timeout == 30.0
    assert ns.drain_timeout == 0.5
    assert ns.health_check_interval == 1.0
    assert ns.force is True
    assert ns.strip_path_prefix is False
    assert ns.health_check_path == "/health"
    assert ns.max_request_body == 1024


def test_defaults():
    ns = deploy_parser().parse_args(["web", "--target", "a:80"])
    assert ns.host == []
    assert ns.strip_path_prefix is True
    assert ns.force is False
    assert ns.deploy_timeout == 30.0
    assert isinstance(ns.deploy_timeout, float)
    assert ns.max_request_body == 0
    assert ns.health_check_path == "/up"


def test_list_repeat_and_csv_keep_order():
    ns = deploy_parser().parse_args(
        ["web", "--target=c", "--target", "a,b", "--target=", '--target="d,e",f', "--target=c"]
    )
    assert ns.target == ["c", "a", "b", "d,e", "f", "c"]


def test_list_default_is_not_shared_between_parses():
    p = deploy_parser()
    p.parse_args(["web", "--target=a", "--host=x"])
    assert p.parse_args(["web", "--target=a"]).host == []


@pytest.mark.parametrize("argv", [["--force", "web"], ["web", "--force"], ["--tls", "--force", "web"]])
def test_bool_never_consumes_next_argument(argv):
    ns = deploy_parser().parse_args([*argv, "--target=a"])
    assert ns.service == "web"
    assert ns.force is True


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("--force", True),
        ("--force=true", True),
        ("--force=1", True),
        ("--force=t", True),
        ("--force=TRUE", True),
        ("--force=false", False),
        ("--force=0", False),
        ("--force=f", False),
        ("--force=False", False),
    ],
)
def test_bool_forms(arg, value):
    assert deploy_parser().parse_args(["web", "--target=a", arg]).force is value


def test_last_occurrence_wins():
    ns = deploy_parser().parse_args(
        ["web", "--target=a", "--force", "--force=false", "--deploy-timeout=5s", "--deploy-timeout=1m"]
    )
    assert ns.force is False
    assert ns.deploy_timeout == 60.0


def test_double_dash_ends_flags():
    ns = deploy_parser().parse_args(["--target=a", "--", "--force"])
    assert ns.service == "--force"
    assert ns.force is False


def test_trailing_double_dash_is_ignored():
    assert deploy_parser().parse_args(["web", "--target=a", "--"]).service == "web"


def test_explicit_lists_only_given_flags():
    p = deploy_parser()
    ns = p.parse_args(["web", "--target=a", "--tls=false", "--deploy-timeout=30s", "--max-request-body", "0"])
    assert p.explicit(ns) == {"target", "tls", "deploy_timeout", "max_request_body"}
    assert p.explicit(p.parse_args(["web", "--target=a"])) == {"target"}


def test_explicit_is_not_a_namespace_attribute():
    ns = deploy_parser().parse_args(["web", "--target=a"])
    assert set(vars(ns)) == {
        "service",
        "target",
        "host",
        "strip_path_prefix",
        "force",
        "tls",
        "deploy_timeout",
        "drain_timeout",
        "health_check_interval",
        "max_request_body",
        "health_check_path",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["web", "--target=a", "--frobnicate"], "unknown flag: --frobnicate"),
        (["web", "--target=a", "--frobnicate=1"], "unknown flag: --frobnicate"),
        (["--frobnicate", "x", "web", "--target=a"], "unknown flag: --frobnicate"),
        (["web", "--targ=a"], "unknown flag: --targ"),
        (["web", "--target=a", "-x"], "unknown flag: -x"),
        (["web", "extra", "--target=a"], "unexpected argument: extra"),
        (["web", "--target=a", "--", "extra"], "unexpected argument: extra"),
        (["web"], "required flag --target not set"),
        (["web", "--host=a"], "required flag --target not set"),
        (["--target=a"], "the following arguments are required: service"),
        (["web", "--target"], "argument --target: expected one argument"),
        (["web", "--target=a", "--deploy-timeout=10x"], 'invalid duration "10x" for --deploy-timeout'),
        (["web", "--target=a", "--deploy-timeout", "10"], 'invalid duration "10" for --deploy-timeout'),
        (["web", "--target=a", "--deploy-timeout="], 'invalid duration "" for --deploy-timeout'),
        (["web", "--target=a", "--force=yes"], 'invalid boolean "yes" for --force'),
        (["web", "--target=a", "--force="], 'invalid boolean "" for --force'),
        (["web", "--target=a", "--max-request-body=1MB"], 'invalid integer "1MB" for --max-request-body'),
        (["web", '--target="a'], 'invalid list ""a" for --target'),
    ],
)
def test_errors_are_one_line_with_status_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        deploy_parser().parse_args(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"pyproxy deploy: {message}\n"


def test_help_shows_go_style_defaults_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        deploy_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Deploy timeout (default 30s)" in out
    assert "Strip the path prefix (default true)" in out
    assert 'Health check path (default "/up")' in out
    assert "Skip health checks" in out
    assert "Skip health checks (default" not in out


def run_parser():
    p = FlagParser(prog="pyproxy run")
    p.add_int("--http-port", default=80, env="HTTP_PORT")
    p.add_bool("--debug", env="DEBUG")
    p.add_duration("--grace", default=30.0, env="GRACE")
    p.add_str("--bind", default="0.0.0.0", env="BIND")
    return p


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("HTTP_PORT", "DEBUG", "GRACE", "BIND"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"PYPROXY_{name}", raising=False)
        monkeypatch.delenv(f"KAMAL_PROXY_{name}", raising=False)
    return monkeypatch


def test_env_supplies_defaults(clean_env):
    clean_env.setenv("HTTP_PORT", "8080")
    clean_env.setenv("DEBUG", "true")
    clean_env.setenv("GRACE", "1m")
    clean_env.setenv("BIND", "127.0.0.1")
    ns = run_parser().parse_args([])
    assert (ns.http_port, ns.debug, ns.grace, ns.bind) == (8080, True, 60.0, "127.0.0.1")


def test_prefixed_env_wins(clean_env):
    clean_env.setenv("HTTP_PORT", "8080")
    clean_env.setenv("PYPROXY_HTTP_PORT", "9090")
    assert run_parser().parse_args([]).http_port == 9090


def test_flag_wins_over_env(clean_env):
    clean_env.setenv("PYPROXY_HTTP_PORT", "9090")
    clean_env.setenv("DEBUG", "1")
    p = run_parser()
    ns = p.parse_args(["--http-port=81", "--debug=false"])
    assert (ns.http_port, ns.debug) == (81, False)
    assert p.explicit(ns) == {"http_port", "debug"}


def test_env_default_is_not_explicit(clean_env):
    clean_env.setenv("HTTP_PORT", "8080")
    p = run_parser()
    assert p.explicit(p.parse_args([])) == set()


@pytest.mark.parametrize(("name", "value"), [("HTTP_PORT", "abc"), ("DEBUG", "yes"), ("GRACE", "10")])
def test_unparsable_env_falls_back_to_default(clean_env, name, value):
    clean_env.setenv(name, value)
    ns = run_parser().parse_args([])
    assert (ns.http_port, ns.debug, ns.grace) == (80, False, 30.0)


def test_empty_prefixed_env_shadows_plain_env(clean_env):
    clean_env.setenv("HTTP_PORT", "8080")
    clean_env.setenv("PYPROXY_HTTP_PORT", "")
    assert run_parser().parse_args([]).http_port == 80


def test_help_shows_env_derived_default(clean_env, capsys):
    clean_env.setenv("HTTP_PORT", "8080")
    with pytest.raises(SystemExit):
        run_parser().parse_args(["-h"])
    assert "(default 8080)" in capsys.readouterr().out
