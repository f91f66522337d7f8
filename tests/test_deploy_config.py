"""pydeploy's `config/deploy.yml`: Kamal's schema, defaults, errors that name the path, ERB, destinations."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from deployer.config import (
    Accessory,
    AccessoryFile,
    BootSettings,
    Buffering,
    BuilderSettings,
    ConfigError,
    Credential,
    EnvSettings,
    Healthcheck,
    JumpHost,
    LoggingSettings,
    ProxyRun,
    ProxySettings,
    RegistrySettings,
    SshSettings,
    SslCertificate,
    load_config,
)
from deployer.secrets import check_referenced

MINIMAL = """
service: app
image: acme/app
servers: [10.0.0.1]
"""

FULL = """
service: shop
image: acme/shop
servers:
  web:
    hosts: [10.0.0.1, 10.0.0.2]
    labels: {team: storefront}
    options: {memory: 512m, init: true, add-host: ["a:1.2.3.4", "b:1.2.3.5"]}
  jobs:
    hosts: [10.0.0.3, 10.0.0.1]
    cmd: bin/jobs
    env:
      clear: {QUEUES: "default,mail"}
      secret: [JOBS_TOKEN]
proxy:
  hosts: [shop.example.com, www.shop.example.com]
  app_port: 3000
  healthcheck: {path: /health, interval: 2, timeout: 10}
  response_timeout: 60
  buffering: {requests: false, max_request_body: 10485760}
  forward_headers: true
  path_prefix: /api, /admin
registry:
  server: ghcr.io
  username: acme
  password: [KAMAL_REGISTRY_PASSWORD]
env:
  clear: {RAILS_ENV: production, WORKERS: 4, DEBUG: false}
  secret: [DATABASE_URL, MASTER_KEY:RAILS_MASTER_KEY]
volumes: ["/srv/shop/storage:/rails/storage"]
builder:
  arch: [amd64, arm64]
  context: .
  dockerfile: Dockerfile.prod
  args: {RUBY_VERSION: 3.3.0, JOBS: 4}
ssh:
  user: deploy
  port: 2222
  proxy: jump@bastion.example.com:2200
  keys: [~/.ssh/deploy_ed25519]
deploy_timeout: 60
drain_timeout: 10
retain_containers: 3
aliases: {console: app exec -i --reuse "bin/rails console"}
asset_path: /rails/public/assets
labels: {owner: platform}
minimum_version: 2.0.0
"""


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def load(root: Path, text: str, destination: str | None = None, version: str | None = "v1", environ=None):
    write(root, "config/deploy.yml", text)
    return load_config(root, destination, version, {} if environ is None else environ)


def error(root: Path, text: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load(root, text, **kwargs)
    return str(caught.value)


def with_servers(servers: str, extra: str = "") -> str:
    return (
        f"service: app\nimage: acme/app\nservers:\n{textwrap.indent(textwrap.dedent(servers), '  ')}{extra}"
    )


# --- a full example and the defaults


def test_full_example_parses_to_its_values(tmp_path):
    config = load(tmp_path, FULL)
    assert (config.service, config.image, config.version, config.destination) == (
        "shop",
        "acme/shop",
        "v1",
        None,
    )
    assert [role.name for role in config.roles] == ["web", "jobs"]
    web, jobs = config.roles
    assert web.hosts == ("10.0.0.1", "10.0.0.2")
    assert web.labels == {"team": "storefront"}
    assert web.options == {"memory": "512m", "init": True, "add-host": ("a:1.2.3.4", "b:1.2.3.5")}
    assert web.proxy == config.proxy
    assert (jobs.cmd, jobs.proxy) == ("bin/jobs", None)
    assert jobs.env == EnvSettings(clear={"QUEUES": "default,mail"}, secret=("JOBS_TOKEN",))
    assert config.proxy == ProxySettings(
        hosts=("shop.example.com", "www.shop.example.com"),
        app_port=3000,
        healthcheck=Healthcheck(path="/health", interval=2, timeout=10),
        response_timeout=60,
        buffering=Buffering(requests=False, max_request_body=10485760),
        forward_headers=True,
        path_prefixes=("/api", "/admin"),
    )
    assert config.registry == RegistrySettings(
        server="ghcr.io",
        username=Credential("acme"),
        password=Credential("KAMAL_REGISTRY_PASSWORD", secret=True),
    )
    assert config.env.clear == {"RAILS_ENV": "production", "WORKERS": "4", "DEBUG": "false"}
    assert config.env.secret == ("DATABASE_URL", "MASTER_KEY:RAILS_MASTER_KEY")
    assert config.volumes == ("/srv/shop/storage:/rails/storage",)
    assert config.builder == BuilderSettings(
        arch=("amd64", "arm64"),
        context=".",
        dockerfile="Dockerfile.prod",
        args={"RUBY_VERSION": "3.3.0", "JOBS": "4"},
    )
    assert config.ssh == SshSettings(
        user="deploy",
        port=2222,
        proxy=JumpHost("jump", "bastion.example.com", 2200),
        keys=("~/.ssh/deploy_ed25519",),
    )
    assert (config.deploy_timeout, config.drain_timeout, config.retain_containers) == (60, 10, 3)
    assert config.aliases == {"console": 'app exec -i --reuse "bin/rails console"'}
    assert config.asset_path == "/rails/public/assets"
    assert config.custom_labels == {"owner": "platform"}
    assert config.minimum_version == "2.0.0"
    assert config.all_hosts() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_minimal_config_gets_kamal_defaults(tmp_path):
    config = load(tmp_path, MINIMAL)
    assert config.proxy == ProxySettings()
    assert (config.proxy.app_port, config.proxy.response_timeout, config.proxy.hosts) == (80, 30, ())
    assert config.proxy.healthcheck == Healthcheck(path="/up", interval=1, timeout=5)
    assert (config.proxy.buffering.requests, config.proxy.buffering.responses) == (True, True)
    assert (config.ssh.user, config.ssh.port, config.ssh.proxy) == ("root", 22, None)
    assert (config.deploy_timeout, config.drain_timeout, config.retain_containers) == (30, 30, 5)
    assert config.builder == BuilderSettings(arch=(), context=None, dockerfile="Dockerfile", args={})
    assert config.registry == RegistrySettings()
    assert config.env == EnvSettings()
    assert (config.volumes, config.aliases, config.asset_path, config.primary_role) == ((), {}, None, "web")


# --- servers and roles


def test_host_list_is_one_proxied_web_role(tmp_path):
    config = load(tmp_path, "service: app\nimage: acme/app\nservers: [10.0.0.1, 10.0.0.2]\n")
    [role] = config.roles
    assert (role.name, role.hosts, role.proxy) == ("web", ("10.0.0.1", "10.0.0.2"), ProxySettings())


def test_roles_take_a_host_list_or_a_mapping_and_the_primary_comes_first(tmp_path):
    config = load(
        tmp_path, with_servers("workers: [10.0.0.3]\nadmin: {hosts: [10.0.0.4]}\nweb: [10.0.0.1]\n")
    )
    assert [(role.name, role.hosts) for role in config.roles] == [
        ("web", ("10.0.0.1",)),
        ("admin", ("10.0.0.4",)),
        ("workers", ("10.0.0.3",)),
    ]
    assert config.all_hosts() == ["10.0.0.1", "10.0.0.4", "10.0.0.3"]


def test_only_the_primary_role_is_proxied_by_default(tmp_path):
    config = load(tmp_path, with_servers("web: [10.0.0.1]\njobs: [10.0.0.2]\n"))
    assert config.roles[0].proxy == ProxySettings()
    assert config.roles[1].proxy is None


def test_primary_role_proxy_false_is_not_proxied(tmp_path):
    config = load(tmp_path, with_servers("web:\n  hosts: [10.0.0.1]\n  proxy: false\n"))
    assert config.roles[0].proxy is None


def test_role_proxy_true_uses_the_root_proxy(tmp_path):
    config = load(
        tmp_path,
        with_servers(
            "web: [10.0.0.1]\napi:\n  hosts: [10.0.0.2]\n  proxy: true\n", "proxy:\n  app_port: 3000\n"
        ),
    )
    assert config.roles[1].proxy == config.proxy == ProxySettings(app_port=3000)


def test_role_proxy_mapping_merges_over_the_root_proxy(tmp_path):
    servers = """
        web: [10.0.0.1]
        api:
          hosts: [10.0.0.2]
          proxy:
            host: api.example.com
            healthcheck: {interval: 3}
    """
    root = "proxy:\n  host: example.com\n  app_port: 3000\n  healthcheck: {path: /health}\n"
    config = load(tmp_path, with_servers(servers, root))
    assert config.roles[1].proxy == ProxySettings(
        hosts=("api.example.com",), app_port=3000, healthcheck=Healthcheck(path="/health", interval=3)
    )
    assert config.roles[0].proxy == ProxySettings(
        hosts=("example.com",), app_port=3000, healthcheck=Healthcheck("/health")
    )


def test_primary_role_can_be_named(tmp_path):
    config = load(tmp_path, with_servers("api: [10.0.0.1]\njobs: [10.0.0.2]\n", "primary_role: jobs\n"))
    assert [(role.name, role.proxy is not None) for role in config.roles] == [("jobs", True), ("api", False)]


def test_missing_primary_role_is_an_error(tmp_path):
    message = error(tmp_path, with_servers("api: [10.0.0.1]\njobs: [10.0.0.2]\n"))
    assert message == 'config/deploy.yml: servers: the primary role "web" is not defined (roles: api, jobs)'


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ("web: {cmd: x}\n", 'servers.web: missing required key "hosts"'),
        ("web: []\n", "servers.web: needs at least one host"),
        ("web: {hosts: []}\n", "servers.web.hosts: needs at least one host"),
        ("web: [10.0.0.1, 10.0.0.1]\n", "servers.web[1]: 10.0.0.1 is listed twice"),
        (
            "web bad: [10.0.0.1]\n",
            'servers.web bad: may contain only letters, digits, "-" and "_", got "web bad"',
        ),
    ],
)
def test_role_errors(tmp_path, servers, message):
    assert error(tmp_path, with_servers(servers)) == f"config/deploy.yml: {message}"


def test_env_plain_mapping_is_clear_and_roles_merge_over_root(tmp_path):
    servers = (
        "web:\n  hosts: [10.0.0.1]\n  env:\n    clear: {B: role, C: '3'}\n    secret: [ROLE_SECRET, DB]\n"
    )
    config = load(tmp_path, with_servers(servers, "env: {A: 1, B: root}\n"))
    assert config.env == EnvSettings(clear={"A": "1", "B": "root"})
    assert config.env_for(config.roles[0]) == EnvSettings(
        clear={"A": "1", "B": "role", "C": "3"}, secret=("ROLE_SECRET", "DB")
    )


def test_env_secret_alias_names_the_secret_to_read():
    env = EnvSettings(secret=("DB_URL", "MASTER_KEY:RAILS_MASTER_KEY"))
    assert env.secret_sources() == {"DB_URL": "DB_URL", "MASTER_KEY": "RAILS_MASTER_KEY"}


@pytest.mark.parametrize(
    ("value", "jump"),
    [
        ("bastion", JumpHost("root", "bastion", 22)),
        ("jump@bastion", JumpHost("jump", "bastion", 22)),
        ("bastion:2200", JumpHost("root", "bastion", 2200)),
        ("jump@10.0.0.9:2200", JumpHost("jump", "10.0.0.9", 2200)),
    ],
)
def test_ssh_jump_host_forms(tmp_path, value, jump):
    assert load(tmp_path, MINIMAL + f"ssh: {{proxy: '{value}'}}\n").ssh.proxy == jump


def test_builder_arch_may_be_a_single_string(tmp_path):
    assert load(tmp_path, MINIMAL + "builder: {arch: arm64}\n").builder.arch == ("arm64",)


def test_x_keys_hold_yaml_anchors_and_are_ignored(tmp_path):
    config = load(
        tmp_path,
        "x-hosts: &hosts [10.0.0.1, 10.0.0.2]\nservice: app\nimage: acme/app\nservers:\n  web: *hosts\n",
    )
    assert config.roles[0].hosts == ("10.0.0.1", "10.0.0.2")


# --- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL + "proxy:\n  healthcheck:\n    intervall: 3\n",
            "proxy.healthcheck.intervall: unknown key (did you mean interval?)",
        ),
        (MINIMAL + "servcie: app\n", "servcie: unknown key (did you mean service?)"),
        (
            with_servers("web:\n  hosts: [10.0.0.1]\n  optoins: {}\n"),
            "servers.web.optoins: unknown key (did you mean options?)",
        ),
        (
            with_servers("web:\n  hosts: [10.0.0.1]\n  proxy: {helthcheck: {}}\n"),
            "servers.web.proxy.helthcheck: unknown key (did you mean healthcheck?)",
        ),
        (MINIMAL + "registry: {pasword: x}\n", "registry.pasword: unknown key (did you mean password?)"),
        (
            MINIMAL + "env: {clear: {A: 1}, tags: {}}\n",
            "env.tags: unknown key (expected one of: clear, secret)",
        ),
        (MINIMAL + "ssh: {zzz: 1}\n", "ssh.zzz: unknown key (expected one of: user, port, proxy, keys)"),
    ],
)
def test_unknown_keys_name_their_path(tmp_path, text, message):
    assert error(tmp_path, text) == f"config/deploy.yml: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (with_servers("web:\n  hosts: [10.0.0.1, 3]\n"), "servers.web.hosts[1]: expected a string, got 3"),
        (
            "service: app\nimage: acme/app\nservers: [10.0.0.1, {10.0.0.2: tag}]\n",
            "servers[1]: expected a string, got a mapping",
        ),
        (
            "service: app\nimage: acme/app\nservers: 10.0.0.1\n",
            'servers: expected a list of hosts or a mapping of roles, got "10.0.0.1"',
        ),
        (MINIMAL + "proxy: {app_port: '80'}\n", 'proxy.app_port: expected an integer, got "80"'),
        (
            MINIMAL + "proxy: {app_port: 70000}\n",
            "proxy.app_port: must be a port number (1-65535), got 70000",
        ),
        (
            MINIMAL + "proxy: {ssl: 'yes'}\n",
            "proxy.ssl: expected true, false or a mapping with certificate_pem and private_key_pem, "
            'got "yes"',
        ),
        (
            MINIMAL + "proxy: {healthcheck: {timeout: 2 seconds}}\n",
            'proxy.healthcheck.timeout: expected seconds, or a duration like "2s", "500ms" or "1m30s", '
            'got "2 seconds"',
        ),
        (MINIMAL + "proxy: {host: a.com, hosts: [b.com]}\n", 'proxy: set "host" or "hosts", not both'),
        (
            with_servers("web:\n  hosts: [10.0.0.1]\n  proxy: 'yes'\n"),
            'servers.web.proxy: expected true, false or a proxy mapping, got "yes"',
        ),
        (
            MINIMAL + "registry: {password: [A, B]}\n",
            "registry.password: expected a string, or a one-element list naming a secret like "
            "[KAMAL_REGISTRY_PASSWORD], got a list",
        ),
        (MINIMAL + "env: {clear: [A]}\n", "env.clear: expected a mapping, got a list"),
        (
            MINIMAL + "env: {secret: ['A:B:C']}\n",
            'env.secret[0]: expected NAME or NAME:SECRET_NAME, got "A:B:C"',
        ),
        (MINIMAL + "env: {A: [1]}\n", "env.A: expected a string, number or boolean, got a list"),
        (MINIMAL + "volumes: [data]\n", 'volumes[0]: expected "host:container", got "data"'),
        (MINIMAL + "volumes: /data:/data\n", 'volumes: expected a list, got "/data:/data"'),
        (MINIMAL + "deploy_timeout: 0\n", "deploy_timeout: must be more than 0 seconds, got 0"),
        (MINIMAL + "retain_containers: true\n", "retain_containers: expected an integer, got true"),
        (MINIMAL + "aliases: {shell: [a]}\n", "aliases.shell: expected a string, got a list"),
        (
            MINIMAL + "labels: {service: x}\n",
            "labels.service: reserved label: pydeploy sets service, role, destination, version itself",
        ),
        (
            MINIMAL + "ssh: {proxy: 'a@b@c'}\n",
            'ssh.proxy: expected a jump host like "user@host:port" or "host", got "a@b@c"',
        ),
        (
            "service: my app\nimage: acme/app\nservers: [10.0.0.1]\n",
            'service: may contain only letters, digits, "-" and "_", got "my app"',
        ),
        (
            "service: app\nimage: acme/app:latest\nservers: [10.0.0.1]\n",
            'image: expected a repository without a tag or registry host, like "acme/app", '
            'got "acme/app:latest"',
        ),
        (MINIMAL + "proxy: {ssl: true}\n", "proxy.ssl: automatic SSL needs a host: set host or hosts"),
        (
            with_servers("web: [10.0.0.1, 10.0.0.2]\n", "proxy: {ssl: true, host: a.com}\n"),
            "servers.web: automatic SSL works on a single server only, but this role has 2 hosts: "
            "provide a certificate (ssl.certificate_pem/private_key_pem)",
        ),
        (MINIMAL + "proxy: {rollout: {}}\n", "proxy.rollout: set percentage, allowlist or both"),
        (
            MINIMAL + "proxy: {rollout: {percentage: 120}}\n",
            "proxy.rollout.percentage: must be between 0 and 100, got 120",
        ),
        (MINIMAL + "proxy: {rollout: {allowlist: a}}\n", 'proxy.rollout.allowlist: expected a list, got "a"'),
        (
            with_servers("web: [10.0.0.1]\nweb-rollout: [10.0.0.2]\n"),
            'servers.web-rollout: role names ending in "-rollout" are kept for the canaries of '
            "`pydeploy rollout`",
        ),
        ("- service\n", "expected a mapping, got a list"),
        (MINIMAL + "env: {1: a}\n", "env: keys must be strings, got 1"),
    ],
)
def test_wrong_types_and_values_name_their_path(tmp_path, text, message):
    assert error(tmp_path, text) == f"config/deploy.yml: {message}"


@pytest.mark.parametrize("key", ["service", "image", "servers"])
def test_required_keys(tmp_path, key):
    text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith(key))
    assert error(tmp_path, text) == f'config/deploy.yml: missing required key "{key}"'


def test_missing_file(tmp_path):
    with pytest.raises(
        ConfigError, match=re.escape(f"Configuration file not found in {tmp_path}/config/deploy.yml")
    ):
        load_config(tmp_path, version="v1", environ={})


def test_unreadable_file(tmp_path):
    (tmp_path / "config/deploy.yml").mkdir(parents=True)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, version="v1", environ={})
    assert str(caught.value) == f"Cannot read configuration file {tmp_path}/config/deploy.yml: Is a directory"


def test_empty_file(tmp_path):
    assert error(tmp_path, "# nothing yet\n").startswith("config/deploy.yml: the file is empty")


def test_invalid_yaml_names_the_line(tmp_path):
    message = error(tmp_path, "service: app\nimage: acme/app\nservers: [10.0.0.1\nproxy: {}\n")
    assert message.startswith("config/deploy.yml: invalid YAML at line 4, column 6: ")


# --- ERB and ${VAR}


@pytest.mark.parametrize(
    ("expression", "environ", "image"),
    [
        ("${APP_IMAGE}", {"APP_IMAGE": "acme/set"}, "acme/set"),
        ("${APP_IMAGE:-acme/default}", {}, "acme/default"),
        ("${APP_IMAGE:-acme/default}", {"APP_IMAGE": ""}, "acme/default"),
        ("${APP_IMAGE:-acme/default}", {"APP_IMAGE": "acme/set"}, "acme/set"),
        ('<%= ENV["APP_IMAGE"] %>', {"APP_IMAGE": "acme/set"}, "acme/set"),
        ("<%= ENV['APP_IMAGE'] %>", {"APP_IMAGE": "acme/set"}, "acme/set"),
        ('<%= ENV.fetch("APP_IMAGE") %>', {"APP_IMAGE": "acme/set"}, "acme/set"),
        ('<%= ENV.fetch("APP_IMAGE", "acme/default") %>', {}, "acme/default"),
        ("<%=ENV.fetch('APP_IMAGE','acme/default')%>", {"APP_IMAGE": "acme/set"}, "acme/set"),
    ],
)
def test_erb_and_variable_forms(tmp_path, expression, environ, image):
    config = load(tmp_path, f"service: app\nimage: {expression}\nservers: [10.0.0.1]\n", environ=environ)
    assert config.image == image


@pytest.mark.parametrize("expression", ["${APP_IMAGE}", '<%= ENV.fetch("APP_IMAGE") %>'])
def test_unset_variable_is_an_error_naming_the_file_and_line(tmp_path, expression):
    message = error(tmp_path, f"service: app\nimage: {expression}\nservers: [10.0.0.1]\n")
    assert message.startswith("config/deploy.yml:2: ")
    assert "APP_IMAGE" in message


def test_erb_commands_run_in_the_project_root(tmp_path):
    (tmp_path / "REVISION").write_text("v7\n")
    text = "service: app\nimage: acme/app\nservers: [10.0.0.1]\nasset_path: <%= `cat REVISION`.strip %>\n"
    for mode in ({}, {"PYDEPLOY_ERB": "subset"}):
        assert load(tmp_path, text, environ={"PATH": os.environ["PATH"], **mode}).asset_path == "v7"


# --- destinations


BASE = """
service: app
image: acme/app
servers:
  web: [10.0.0.1, 10.0.0.2]
proxy:
  host: app.example.com
  app_port: 3000
env:
  clear: {A: 1, B: 2}
"""


def test_destination_deep_merges_mappings_and_replaces_lists(tmp_path):
    write(
        tmp_path,
        "config/deploy.staging.yml",
        "servers:\n  web: [10.1.0.1]\nproxy:\n  host: staging.example.com\nenv:\n  clear: {B: 3}\n",
    )
    config = load(tmp_path, BASE, destination="staging")
    assert config.destination == "staging"
    assert config.roles[0].hosts == ("10.1.0.1",)
    assert config.proxy == ProxySettings(hosts=("staging.example.com",), app_port=3000)
    assert config.env.clear == {"A": "1", "B": "3"}


def test_destination_is_visible_to_erb(tmp_path):
    write(tmp_path, "config/deploy.staging.yml", "")
    text = MINIMAL + "proxy: {host: '${KAMAL_DESTINATION:-www}.example.com'}\n"
    assert load(tmp_path, text).proxy.hosts == ("www.example.com",)
    assert load(tmp_path, text, destination="staging").proxy.hosts == ("staging.example.com",)


def test_missing_destination_file(tmp_path):
    message = error(tmp_path, BASE, destination="staging")
    assert message == f"Configuration file not found in {tmp_path}/config/deploy.staging.yml"


def test_errors_name_the_destination_file_that_set_the_value(tmp_path):
    write(tmp_path, "config/deploy.staging.yml", "proxy: {app_port: '3000'}\n")
    message = error(tmp_path, BASE, destination="staging")
    assert message == 'config/deploy.staging.yml: proxy.app_port: expected an integer, got "3000"'
    write(tmp_path, "config/deploy.staging.yml", "servers: {web: [10.1.0.1, 3]}\n")
    message = error(tmp_path, BASE, destination="staging")
    assert message == "config/deploy.staging.yml: servers.web[1]: expected a string, got 3"
    write(tmp_path, "config/deploy.staging.yml", "proxy: {host: x}\n")
    assert error(tmp_path, BASE + "drain_timeout: -1\n", destination="staging").startswith(
        "config/deploy.yml: drain_timeout"
    )


def test_destination_name_must_be_a_plain_name(tmp_path):
    assert "may contain only letters" in error(tmp_path, BASE, destination="../prod")


# --- names and labels


def test_names_without_destination(tmp_path):
    config = load(
        tmp_path,
        with_servers(
            "web:\n  hosts: [10.0.0.1]\n  labels: {team: a, tier: web}\n", "labels: {team: root, owner: x}\n"
        ),
    )
    web = config.roles[0]
    assert config.service_with_destination == "app"
    assert config.container_prefix(web) == "app-web"
    assert config.container_name(web, "3f1c9a") == "app-web-3f1c9a"
    assert config.labels(web, "3f1c9a") == {
        "service": "app",
        "role": "web",
        "destination": "",
        "version": "3f1c9a",
        "team": "a",
        "owner": "x",
        "tier": "web",
    }


def test_names_with_destination(tmp_path):
    write(tmp_path, "config/deploy.staging.yml", "")
    config = load(tmp_path, with_servers("web: [10.0.0.1]\njobs: [10.0.0.2]\n"), destination="staging")
    jobs = config.roles[1]
    assert config.service_with_destination == "app-staging"
    assert config.container_prefix(jobs) == "app-jobs-staging"
    assert config.container_name(jobs, "3f1c9a") == "app-jobs-staging-3f1c9a"
    assert config.labels(jobs, "3f1c9a") == {
        "service": "app",
        "role": "jobs",
        "destination": "staging",
        "version": "3f1c9a",
    }


def test_repository_includes_the_registry_server(tmp_path):
    assert load(tmp_path, MINIMAL).repository == "acme/app"
    assert load(tmp_path, MINIMAL + "registry: {server: 'registry.example.com:5000'}\n").repository == (
        "registry.example.com:5000/acme/app"
    )


def test_registry_credential_resolves_a_secret_or_a_literal():
    assert (
        Credential("KAMAL_REGISTRY_PASSWORD", secret=True).resolve({"KAMAL_REGISTRY_PASSWORD": "pw"}) == "pw"
    )
    assert Credential("acme").resolve({}) == "acme"


# --- printing


def test_as_dict_prints_as_yaml_and_hides_a_literal_registry_password(tmp_path):
    config = load(tmp_path, FULL.replace("password: [KAMAL_REGISTRY_PASSWORD]", "password: hunter2"))
    printed = yaml.safe_dump(config.as_dict(), sort_keys=False)
    assert "hunter2" not in printed
    data = yaml.safe_load(printed)
    assert data["registry"] == {"server": "ghcr.io", "username": "acme", "password": "[REDACTED]"}
    assert data["roles"][0]["options"]["add-host"] == ["a:1.2.3.4", "b:1.2.3.5"]
    assert data["proxy"]["healthcheck"] == {
        "path": "/health",
        "interval": 2,
        "timeout": 10,
        "port": None,
        "host": None,
    }


def test_as_dict_shows_a_secret_reference_as_in_the_yaml(tmp_path):
    assert load(tmp_path, FULL).as_dict()["registry"]["password"] == ["KAMAL_REGISTRY_PASSWORD"]


# --- versions


def git(root: Path, *args: str) -> str:
    command = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args]
    return subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q")
    write(tmp_path, "config/deploy.yml", MINIMAL)
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


def test_version_flag_wins_over_version_env(tmp_path):
    assert load(tmp_path, MINIMAL, version="flag", environ={"VERSION": "env"}).version == "flag"
    assert load(tmp_path, MINIMAL, version=None, environ={"VERSION": "env"}).version == "env"


def test_version_defaults_to_git_head(repo):
    assert load_config(repo, environ={}).version == git(repo, "rev-parse", "HEAD")


def test_dirty_tree_gets_a_suffix_only_when_building_from_the_working_directory(repo):
    head = git(repo, "rev-parse", "HEAD")
    (repo / "dirty.txt").write_text("x")
    assert load_config(repo, environ={}).version == head
    write(repo, "config/deploy.yml", MINIMAL + "builder: {context: .}\n")
    assert re.fullmatch(f"{head}_uncommitted_[0-9a-f]{{16}}", load_config(repo, environ={}).version)


def test_version_needs_git_without_flag_or_env(tmp_path):
    message = error(tmp_path, MINIMAL, version=None)
    assert message.startswith(f"Can't use commit hash as version, no git repository found in {tmp_path}")


def test_version_must_be_an_image_tag(tmp_path):
    assert error(tmp_path, MINIMAL, version="1 2").startswith('Version "1 2" cannot be an image tag')


# --- durations


@pytest.mark.parametrize(
    ("written", "seconds", "flag"),
    [
        ("2", 2, "2s"),
        ("1.5", 1.5, "1.5s"),
        ("'2s'", 2, "2s"),
        ("500ms", 0.5, "0.5s"),
        ("1m30s", 90, "90s"),
        ("1h", 3600, "3600s"),
        ("1.5m", 90, "90s"),
        ("'30'", 30, "30s"),
    ],
)
def test_durations_are_numbers_or_go_duration_strings(tmp_path, written, seconds, flag):
    config = load(tmp_path, MINIMAL + f"proxy: {{healthcheck: {{interval: {written}}}}}\n")
    assert config.proxy.healthcheck.interval == seconds
    assert f"{config.proxy.healthcheck.interval}s" == flag


@pytest.mark.parametrize("key", ["deploy_timeout", "drain_timeout", "readiness_delay"])
def test_root_durations_read_strings(tmp_path, key):
    assert getattr(load(tmp_path, MINIMAL + f"{key}: 1m\n"), key) == 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "deploy_timeout: 1d\n", 'deploy_timeout: expected seconds, or a duration like "2s"'),
        (MINIMAL + "drain_timeout: -1\n", "drain_timeout: must not be negative, got -1"),
        (MINIMAL + "drain_timeout: '-1s'\n", "drain_timeout: expected seconds, or a duration"),
        (MINIMAL + "readiness_delay: true\n", "readiness_delay: expected seconds, or a duration"),
        (MINIMAL + "proxy: {response_timeout: 0s}\n", "proxy.response_timeout: must be more than 0 seconds"),
        (MINIMAL + "stop_timeout: 1.5s\n", 'stop_timeout: docker stop takes whole seconds, got "1.5s"'),
        (MINIMAL + "boot: {wait: soon}\n", "boot.wait: expected seconds, or a duration"),
    ],
)
def test_bad_durations_name_their_path(tmp_path, text, message):
    assert error(tmp_path, text).startswith(f"config/deploy.yml: {message}")


# --- boot, hooks, error pages, readiness, stop timeouts, logging


@pytest.mark.parametrize(
    ("boot", "settings", "group_of_10"),
    [
        ("{}", BootSettings(), 10),
        ("{limit: 2, wait: 2s}", BootSettings(limit=2, wait=2), 2),
        ("{limit: 25%, wait: 1}", BootSettings(limit_percent=25, wait=1), 2),
        ("{limit: '1%'}", BootSettings(limit_percent=1), 1),
        ("{parallel_roles: true}", BootSettings(parallel_roles=True), 10),
    ],
)
def test_boot(tmp_path, boot, settings, group_of_10):
    config = load(tmp_path, MINIMAL + f"boot: {boot}\n")
    assert config.boot == settings
    assert config.boot.group_size(10) == group_of_10


@pytest.mark.parametrize(
    ("boot", "message"),
    [
        ("{limit: 0}", "boot.limit: must be at least 1, got 0"),
        ("{limit: '25'}", 'boot.limit: expected a number of hosts, or a percentage like "25%", got "25"'),
        ("{limit: 150%}", 'boot.limit: a percentage must be from 1% to 100%, got "150%"'),
        ("{limt: 2}", "boot.limt: unknown key (did you mean limit?)"),
        ("{parallel_roles: 1}", "boot.parallel_roles: expected true or false, got 1"),
    ],
)
def test_bad_boot(tmp_path, boot, message):
    assert error(tmp_path, MINIMAL + f"boot: {boot}\n") == f"config/deploy.yml: {message}"


def test_paths_readiness_and_stop_timeouts(tmp_path):
    (tmp_path / "public").mkdir()
    config = load(
        tmp_path,
        with_servers(
            "web: [10.0.0.1]\njob:\n  hosts: [10.0.0.2]\n  cmd: bin/jobs\n  stop_timeout: 1m\n",
            "\nhooks_path: ops/hooks\nerror_pages_path: public\nreadiness_delay: 3\nstop_timeout: 20\n",
        ),
    )
    web, job = config.roles
    assert (config.hooks_path, config.error_pages_path, config.readiness_delay) == ("ops/hooks", "public", 3)
    assert (config.stop_timeout_for(web), config.stop_timeout_for(job)) == (20, 60)


def test_defaults_of_the_new_root_keys(tmp_path):
    config = load(tmp_path, MINIMAL)
    assert (config.hooks_path, config.error_pages_path, config.readiness_delay) == (".kamal/hooks", None, 7)
    assert (config.boot, config.logging, config.accessories, config.warnings) == (
        BootSettings(),
        LoggingSettings(),
        (),
        (),
    )
    assert config.stop_timeout_for(config.roles[0]) is None


def test_error_pages_path_must_be_a_directory_in_the_project(tmp_path):
    assert error(tmp_path, MINIMAL + "error_pages_path: public\n") == (
        f"config/deploy.yml: error_pages_path: public is not a directory in {tmp_path}"
    )


def test_logging_at_the_root_and_per_role(tmp_path):
    config = load(
        tmp_path,
        with_servers(
            "web:\n  hosts: [10.0.0.1]\n  logging: {driver: syslog}\n",
            "\nlogging: {driver: json-file, options: {max-size: 100m, max-file: 3}}\n",
        ),
    )
    assert config.logging == LoggingSettings(
        driver="json-file", options={"max-size": "100m", "max-file": "3"}
    )
    assert config.roles[0].logging == LoggingSettings(driver="syslog")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "logging: {options: [a]}\n", "logging.options: expected a mapping, got a list"),
        (MINIMAL + "logging: {drivers: x}\n", "logging.drivers: unknown key (did you mean driver?)"),
        (
            with_servers("web:\n  hosts: [10.0.0.1]\n  logging: {driver: 1}\n"),
            "servers.web.logging.driver: expected a string, got 1",
        ),
        (
            with_servers("web:\n  hosts: [10.0.0.1]\n  asset_path: [a]\n"),
            "servers.web.asset_path: expected a string, got a list",
        ),
        (
            with_servers("web:\n  hosts: [10.0.0.1]\n  stop_timeout: x\n"),
            'servers.web.stop_timeout: expected seconds, or a duration like "2s", "500ms" or "1m30s", '
            'got "x"',
        ),
        (MINIMAL + "hooks_path: 1\n", "hooks_path: expected a string, got 1"),
    ],
)
def test_bad_logging_and_role_keys(tmp_path, text, message):
    assert error(tmp_path, text) == f"config/deploy.yml: {message}"


def test_role_asset_path(tmp_path):
    config = load(tmp_path, with_servers("web:\n  hosts: [10.0.0.1]\n  asset_path: /app/public/assets\n"))
    assert config.roles[0].asset_path == "/app/public/assets"


# --- proxy: certificates, run, logging and pyproxy's options


CERTIFICATE = "proxy:\n  host: a.com\n  ssl: {certificate_pem: CERT_PEM, private_key_pem: KEY_PEM}\n"


def test_custom_certificate_from_secrets_allows_several_hosts(tmp_path):
    config = load(tmp_path, with_servers("web: [10.0.0.1, 10.0.0.2]\n", CERTIFICATE))
    assert config.proxy.ssl is True
    assert config.proxy.certificate == SslCertificate(certificate_pem="CERT_PEM", private_key_pem="KEY_PEM")
    assert config.roles[0].proxy.certificate == config.proxy.certificate


def test_check_referenced_finds_certificate_eab_and_accessory_secrets(tmp_path):
    config = load(
        tmp_path,
        with_servers(
            "web: [10.0.0.1]\n",
            "\nproxy:\n  host: a.com\n  ssl: true\n  acme_eab_kid: kid\n  acme_eab_hmac_key: [EAB_HMAC]\n"
            "accessories:\n  db:\n    image: postgres:16\n    host: 10.0.0.1\n"
            "    env: {secret: [POSTGRES_PASSWORD]}\n"
            "  cache:\n    image: redis:7\n    role: web\n"
            "    proxy:\n      host: c.com\n"
            "      ssl: {certificate_pem: CERT_PEM, private_key_pem: KEY_PEM}\n",
        ),
    )
    with pytest.raises(ConfigError) as caught:
        check_referenced(config, {})
    assert str(caught.value).splitlines() == [
        f"Secret {key} (used by {used_by}) is not defined in .kamal/secrets-common or .kamal/secrets"
        for key, used_by in (
            ("EAB_HMAC", "proxy.acme_eab_hmac_key"),
            ("POSTGRES_PASSWORD", "accessories.db.env.secret"),
            ("CERT_PEM", "accessories.cache.proxy.ssl.certificate_pem"),
            ("KEY_PEM", "accessories.cache.proxy.ssl.private_key_pem"),
        )
    ]
    check_referenced(config, dict.fromkeys(("EAB_HMAC", "POSTGRES_PASSWORD", "CERT_PEM", "KEY_PEM"), "x"))


def test_proxy_run_and_the_proxy_image(tmp_path):
    config = load(
        tmp_path,
        MINIMAL
        + "proxy:\n  run:\n    http_port: 8080\n    https_port: 8443\n    bind_ips: [127.0.0.1, '::1']\n"
        "    metrics_port: 9090\n    debug: true\n    log_max_size: 30m\n    registry: registry:4443\n"
        "    repository: acme/pyproxy\n    version: v2\n    options: {memory: 512m, label: [a=b]}\n",
    )
    run = config.proxy.run
    assert run == ProxyRun(
        registry="registry:4443",
        repository="acme/pyproxy",
        version="v2",
        http_port=8080,
        https_port=8443,
        bind_ips=("127.0.0.1", "::1"),
        metrics_port=9090,
        debug=True,
        log_max_size="30m",
        options={"memory": "512m", "label": ("a=b",)},
    )
    assert run.image_ref("pyproxy:latest") == "registry:4443/acme/pyproxy:v2"
    ours = load(tmp_path, MINIMAL + "proxy: {image: 'reg/pyproxy:1'}\n").proxy
    assert (ours.image, ours.run.image_ref("default")) == ("reg/pyproxy:1", "reg/pyproxy:1")
    assert load(tmp_path, MINIMAL + "proxy: {run: {image: 'reg/p:2'}}\n").proxy.image == "reg/p:2"
    assert load(tmp_path, MINIMAL).proxy.run is None
    assert ProxyRun().image_ref("pyproxy:latest") == "pyproxy:latest"


def test_proxy_logging_redirect_prefix_stripping_and_pyproxy_options(tmp_path):
    proxy = load(
        tmp_path,
        MINIMAL
        + """
proxy:
  hosts: [a.com, www.a.com]
  ssl: true
  ssl_redirect: false
  strip_path_prefix: false
  logging: {request_headers: [User-Agent], response_headers: [X-Request-ID]}
  healthcheck: {port: 8081, host: internal.a.com}
  canonical_host: a.com
  acme_directory: https://acme.example.com/directory
  acme_eab_kid: kid
  acme_eab_hmac_key: [EAB_HMAC]
  read_targets: ["10.0.0.5:3000", replica]
  read_target_websockets: true
  writer_affinity_timeout: 2s
  client_ip_header: CF-Connecting-IP
  scope_cookie_paths: true
  exclude_metrics_paths: [/up]
  targets: ["10.0.0.6:3000"]
""",
    ).proxy
    assert (proxy.ssl_redirect, proxy.strip_path_prefix) == (False, False)
    assert (proxy.log_request_headers, proxy.log_response_headers) == (("User-Agent",), ("X-Request-ID",))
    assert (proxy.healthcheck.port, proxy.healthcheck.host) == (8081, "internal.a.com")
    assert proxy.canonical_host == "a.com"
    assert proxy.acme_directory == "https://acme.example.com/directory"
    assert (proxy.acme_eab_kid, proxy.acme_eab_hmac_key) == (Credential("kid"), Credential("EAB_HMAC", True))
    assert (proxy.read_targets, proxy.read_target_websockets) == (("10.0.0.5:3000", "replica"), True)
    assert (proxy.writer_affinity_timeout, proxy.client_ip_header) == (2, "CF-Connecting-IP")
    assert (proxy.scope_cookie_paths, proxy.exclude_metrics_paths) == (True, ("/up",))
    assert proxy.targets == ("10.0.0.6:3000",)


def test_proxy_defaults_leave_pyproxy_defaults(tmp_path):
    proxy = load(tmp_path, MINIMAL).proxy
    assert proxy.log_request_headers is None  # Kamal's default request headers
    assert (proxy.ssl_redirect, proxy.strip_path_prefix, proxy.certificate) == (None, None, None)


def test_on_demand_tls_needs_no_host(tmp_path):
    proxy = load(tmp_path, MINIMAL + "proxy: {ssl: true, tls_on_demand_url: /allowed}\n").proxy
    assert (proxy.ssl, proxy.hosts, proxy.tls_on_demand_url) == (True, (), "/allowed")


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        (
            "{host: a.com, ssl: {certificate_pem: CERT}}",
            "proxy.ssl: missing private_key_pem (required when certificate_pem is present)",
        ),
        (
            "{host: a.com, ssl: {private_key_pem: KEY}}",
            "proxy.ssl: missing certificate_pem (required when private_key_pem is present)",
        ),
        (
            "{host: a.com, ssl: {certificate_pem: my cert, private_key_pem: KEY}}",
            'proxy.ssl.certificate_pem: expected the name of a secret, like CERTIFICATE_PEM, got "my cert"',
        ),
        ("{ssl: {certificate_pem: C, private_key_pem: K}}", "proxy.ssl: automatic SSL needs a host"),
        ("{logging: {request_header: [A]}}", "proxy.logging.request_header: unknown key (did you mean"),
        ("{ssl_redirect: 'no'}", "proxy.ssl_redirect: expected true or false"),
        ("{strip_path_prefix: 0}", "proxy.strip_path_prefix: expected true or false, got 0"),
        ("{run: {http_port: 0}}", "proxy.run.http_port: must be at least 1, got 0"),
        ("{run: {bind_ips: [localhost]}}", "proxy.run.bind_ips[0]: expected an IPv4 or IPv6 address"),
        (
            "{run: {publish: false, http_port: 8080}}",
            "proxy.run: cannot set http_port, https_port or bind_ips when publish is false",
        ),
        ("{run: {image: a, version: v1}}", "proxy.run: set image (a whole image reference) or registry/"),
        ("{image: a, run: {image: b}}", 'proxy: set "image" or "run.image", not both'),
        ("{run: {port: 1}}", "proxy.run.port: unknown key"),
        ("{healthcheck: {port: 0}}", "proxy.healthcheck.port: must be at least 1, got 0"),
        ("{healthcheck: {host: [a]}}", "proxy.healthcheck.host: expected a string, got a list"),
        ("{hosts: [a.com], canonical_host: b.com}", "proxy.canonical_host: b.com is not one of the hosts"),
        ("{tls_staging: true}", "proxy.tls_staging: needs ssl: true"),
        (
            "{host: a.com, ssl: true, acme_eab_kid: k}",
            "proxy: set acme_eab_kid and acme_eab_hmac_key together",
        ),
        (
            "{host: a.com, ssl: true, acme_eab_hmac_key: [A, B]}",
            "proxy.acme_eab_hmac_key: expected a string, or a one-element list naming a secret",
        ),
        (
            "{host: a.com, ssl: {certificate_pem: C, private_key_pem: K}, acme_directory: https://x}",
            "proxy.acme_directory: a custom certificate (ssl.certificate_pem) does not use ACME",
        ),
        (
            "{host: a.com, ssl: true, tls_staging: true, acme_directory: https://x}",
            'proxy: set "tls_staging" or "acme_directory", not both',
        ),
        (
            "{host: a.com, ssl: true, tls_on_demand_url: /ok}",
            "proxy.tls_on_demand_url: serves any host the URL allows, so it cannot be used with hosts",
        ),
        (
            "{ssl: true, tls_on_demand_url: 'ftp://x'}",
            'proxy.tls_on_demand_url: expected a path or an absolute http(s) URL, got "ftp://x"',
        ),
        ("{read_targets: ['a b']}", 'proxy.read_targets[0]: expected a target "host:port"'),
        ("{targets: ['a:70000']}", 'proxy.targets[0]: expected a target "host:port"'),
        ("{read_target_websockets: 1}", "proxy.read_target_websockets: expected true or false"),
        ("{writer_affinity_timeout: x}", "proxy.writer_affinity_timeout: expected seconds"),
        ("{client_ip_header: 1}", "proxy.client_ip_header: expected a string, got 1"),
        ("{scope_cookie_paths: x}", "proxy.scope_cookie_paths: expected true or false"),
        (
            "{exclude_metrics_paths: [up]}",
            'proxy.exclude_metrics_paths[0]: expected a path starting with "/"',
        ),
    ],
)
def test_bad_proxy_settings_name_their_path(tmp_path, proxy, message):
    assert error(tmp_path, MINIMAL + f"proxy: {proxy}\n").startswith(f"config/deploy.yml: {message}")


def test_proxy_container_settings_belong_in_the_root_proxy(tmp_path):
    text = with_servers("web:\n  hosts: [10.0.0.1]\n  proxy: {run: {http_port: 8080}}\n")
    assert error(tmp_path, text) == (
        "config/deploy.yml: servers.web.proxy.run: the proxy container is configured in the root proxy only"
    )


def test_roles_cannot_share_an_ssl_host(tmp_path):
    text = with_servers(
        "web: [10.0.0.1]\napi:\n  hosts: [10.0.0.2]\n  proxy: {path_prefix: /api}\n",
        "proxy: {ssl: true, host: a.com}\n",
    )
    assert error(tmp_path, text) == (
        "config/deploy.yml: servers: different roles can't share the same host for SSL: a.com"
    )


def test_as_dict_hides_a_literal_eab_key(tmp_path):
    config = load(
        tmp_path, MINIMAL + "proxy: {host: a.com, ssl: true, acme_eab_kid: kid, acme_eab_hmac_key: s3cret}\n"
    )
    printed = yaml.safe_dump(config.as_dict())
    assert "s3cret" not in printed
    assert yaml.safe_load(printed)["proxy"]["acme_eab_hmac_key"] == "[REDACTED]"


# --- accessories


ACCESSORIES = """
service: kbs
image: acme/kbs
servers:
  web: [10.0.0.1, 10.0.0.2]
  job:
    hosts: [10.0.0.3]
    cmd: bin/jobs
accessories:
  db:
    image: postgres:16
    host: 10.0.0.1
    port: "127.0.0.1:5432:5432"
    env:
      clear: {POSTGRES_USER: kbs}
      secret: [POSTGRES_PASSWORD]
    files:
      - config/init.sql:/docker-entrypoint-initdb.d/init.sql
      - {local: config/pg.conf.erb, remote: /etc/postgresql/pg.conf, mode: "0600", options: ro}
    directories:
      - data:/var/lib/postgresql/data
      - {local: /srv/logs, remote: /var/log/postgresql, options: z}
    volumes: ["/srv/backups:/backups"]
    options: {restart: always, shm-size: 256m}
    labels: {tier: data}
    cmd: postgres -c max_connections=200
    network: backend
  redis:
    service: cache
    image: redis:7
    roles: [web, job]
    port: 6379
    registry: {server: ghcr.io, username: acme, password: [GHCR_TOKEN]}
    proxy: {host: redis.example.com, app_port: 6379}
"""


def accessory_project(root: Path) -> None:
    write(root, "config/init.sql", "create table t (id int);\n")
    write(root, "config/pg.conf.erb", "max_connections = <%= ENV['MAX'] %>\n")


def test_accessories(tmp_path):
    accessory_project(tmp_path)
    config = load(tmp_path, ACCESSORIES)
    db, redis = config.accessories
    assert db == Accessory(
        name="db",
        service="kbs-db",
        image="postgres:16",
        hosts=("10.0.0.1",),
        port="127.0.0.1:5432:5432",
        cmd="postgres -c max_connections=200",
        env=EnvSettings(clear={"POSTGRES_USER": "kbs"}, secret=("POSTGRES_PASSWORD",)),
        files=(
            AccessoryFile("config/init.sql", "/docker-entrypoint-initdb.d/init.sql"),
            AccessoryFile("config/pg.conf.erb", "/etc/postgresql/pg.conf", mode="0600", options="ro"),
        ),
        directories=("data:/var/lib/postgresql/data", "/srv/logs:/var/log/postgresql:z"),
        volumes=("/srv/backups:/backups",),
        options={"restart": "always", "shm-size": "256m"},
        labels={"tier": "data"},
        network="backend",
    )
    assert (redis.service, redis.image, redis.hosts, redis.port) == (
        "cache",
        "ghcr.io/redis:7",
        ("10.0.0.1", "10.0.0.2", "10.0.0.3"),
        "6379:6379",
    )
    assert redis.registry.password == Credential("GHCR_TOKEN", secret=True)
    assert (redis.proxy.hosts, redis.proxy.app_port) == (("redis.example.com",), 6379)
    assert config.accessory("redis") is redis


def test_unknown_accessory_lists_the_known_ones(tmp_path):
    accessory_project(tmp_path)
    with pytest.raises(ConfigError, match=re.escape('No accessory "pg" (accessories: db, redis)')):
        load(tmp_path, ACCESSORIES).accessory("pg")


@pytest.mark.parametrize(
    ("accessory", "message"),
    [
        ("{image: redis, hosts: []}", "accessories.x.hosts: needs at least one host"),
        (
            "{image: redis, hosts: [10.0.0.1, 10.0.0.9]}",
            "accessories.x.hosts[1]: accessory x is placed on 10.0.0.9, which is in no role of servers",
        ),
        (
            "{image: redis, host: 10.0.0.9}",
            "accessories.x.host: accessory x is placed on 10.0.0.9, which is in no role of servers",
        ),
        ("{image: redis}", "accessories.x: specify exactly one of host, hosts, role or roles"),
        (
            "{image: redis, host: 10.0.0.1, role: web}",
            "accessories.x: specify exactly one of host, hosts, role or roles (got host, role)",
        ),
        ("{image: redis, role: db}", 'accessories.x.role: unknown role "db" (roles: web)'),
        ("{image: redis, roles: [web, db]}", 'accessories.x.roles[1]: unknown role "db" (roles: web)'),
        ("{image: redis, tag: writer}", "accessories.x.tag: host tags are not supported by pydeploy"),
        ("{host: 10.0.0.1}", 'accessories.x: missing required key "image"'),
        (
            "{image: redis, host: 10.0.0.1, imgae: a}",
            "accessories.x.imgae: unknown key (did you mean image?)",
        ),
        ("{image: 'my redis', host: 10.0.0.1}", 'accessories.x.image: expected an image like "postgres:16"'),
        ("{image: redis, host: 10.0.0.1, port: 'abc'}", 'accessories.x.port: expected a port like "3306"'),
        ("{image: redis, host: 10.0.0.1, port: '1:2:3:4'}", "accessories.x.port: expected a port like"),
        ("{image: redis, host: 10.0.0.1, port: 70000}", "accessories.x.port: expected a port like"),
        ("{image: redis, host: 10.0.0.1, port: '1.2:80:80'}", "accessories.x.port: expected a port like"),
        ("{image: redis, host: 10.0.0.1, env: {secret: A}}", "accessories.x.env.secret: expected a list"),
        (
            "{image: redis, host: 10.0.0.1, files: [nope.conf:/etc/a]}",
            "accessories.x.files[0]: nope.conf does not exist in",
        ),
        ("{image: redis, host: 10.0.0.1, files: [a]}", 'accessories.x.files[0]: expected "local:remote"'),
        ("{image: redis, host: 10.0.0.1, files: 'a:/b'}", "accessories.x.files: expected a list"),
        (
            "{image: redis, host: 10.0.0.1, files: [{local: a, remote: /b, owner: root}]}",
            "accessories.x.files[0].owner: not supported: pydeploy does not chown",
        ),
        (
            "{image: redis, host: 10.0.0.1, files: [{local: a, remote: /b, mode: 600}]}",
            "accessories.x.files[0].mode: expected a string, got 600",
        ),
        (
            "{image: redis, host: 10.0.0.1, directories: ['data:relative']}",
            'accessories.x.directories[0]: the remote path must be absolute, got "relative"',
        ),
        (
            "{image: redis, host: 10.0.0.1, directories: [{local: a, remote: /b, mode: '0700'}]}",
            "accessories.x.directories[0].mode: unknown key",
        ),
        (
            "{image: redis, host: 10.0.0.1, volumes: [data]}",
            'accessories.x.volumes[0]: expected "host:container"',
        ),
        ("{image: redis, host: 10.0.0.1, options: [a]}", "accessories.x.options: expected a mapping"),
        (
            "{image: redis, host: 10.0.0.1, labels: {service: y}}",
            "accessories.x.labels.service: reserved label: pydeploy sets service itself",
        ),
        ("{image: redis, host: 10.0.0.1, registry: {serv: a}}", "accessories.x.registry.serv: unknown key"),
        (
            "{image: redis, host: 10.0.0.1, proxy: {ssl: true}}",
            "accessories.x.proxy.ssl: automatic SSL needs a host",
        ),
        (
            "{image: redis, host: 10.0.0.1, proxy: {image: p}}",
            "accessories.x.proxy.image: the proxy container is configured in the root proxy only",
        ),
        ("{image: redis, host: 10.0.0.1, network: 'a b'}", "accessories.x.network: may contain only letters"),
        ("{image: redis, host: 10.0.0.1, service: 'a b'}", "accessories.x.service: may contain only letters"),
        ("[redis]", "accessories.x: expected a mapping, got a list"),
    ],
)
def test_bad_accessories_name_their_path(tmp_path, accessory, message):
    text = MINIMAL + f"accessories:\n  x: {accessory}\n"
    assert error(tmp_path, text).startswith(f"config/deploy.yml: {message}")


# --- Kamal 1 keys


def test_kamal1_healthcheck_is_read_as_the_proxy_healthcheck_with_warnings(tmp_path):
    config = load(
        tmp_path,
        MINIMAL + "healthcheck: {path: /healthz, port: 3000, interval: 2s, max_attempts: 7, cord: /tmp/c, "
        "log_lines: 20}\n"
        "traefik: {options: {publish: ['8080:8080']}}\n",
    )
    assert config.proxy.healthcheck == Healthcheck(path="/healthz", interval=2)
    assert config.proxy.app_port == 3000
    assert config.warnings == (
        "config/deploy.yml: traefik: is Kamal 1's: pyproxy replaces Traefik, configure proxy instead "
        "(ignored)",
        "config/deploy.yml: healthcheck: is Kamal 1's: path and interval now go in proxy.healthcheck "
        "(read there)",
        "config/deploy.yml: healthcheck.port: is Kamal 1's: it is proxy.app_port now (read as that)",
        "config/deploy.yml: healthcheck.max_attempts: is Kamal 1's: the proxy retries the health check until "
        "deploy_timeout; set that instead (ignored)",
        "config/deploy.yml: healthcheck.cord: is Kamal 1's: the proxy checks health over HTTP now (ignored)",
        "config/deploy.yml: healthcheck.log_lines: is Kamal 1's: the proxy checks health over HTTP now "
        "(ignored)",
    )


def test_kamal2_proxy_settings_win_over_the_kamal1_healthcheck(tmp_path):
    config = load(
        tmp_path,
        MINIMAL
        + "healthcheck: {path: /old, port: 3000}\nproxy: {app_port: 4000, healthcheck: {path: /new}}\n",
    )
    assert (config.proxy.healthcheck.path, config.proxy.app_port) == ("/new", 4000)
    assert config.warnings[-1] == (
        "config/deploy.yml: healthcheck.port: is Kamal 1's: it is proxy.app_port now "
        "(ignored, app_port is set)"
    )


def test_max_attempts_in_a_proxy_healthcheck_is_ignored_with_a_warning(tmp_path):
    config = load(
        tmp_path,
        with_servers(
            "web:\n  hosts: [10.0.0.1]\n  proxy: {healthcheck: {max_attempts: 3}}\n",
            "proxy: {healthcheck: {path: /up, max_attempts: 10}}\n",
        ),
    )
    assert config.roles[0].proxy.healthcheck == Healthcheck()
    assert [warning.split(": ")[1] for warning in config.warnings] == [
        "proxy.healthcheck.max_attempts",
        "servers.web.proxy.healthcheck.max_attempts",
    ]


def test_kamal1_role_keys(tmp_path):
    config = load(
        tmp_path,
        with_servers(
            "web: [10.0.0.1]\napi:\n  hosts: [10.0.0.2]\n  traefik: true\n"
            "  healthcheck: {path: /api/up, port: 4000}\n"
        ),
    )
    assert config.roles[1].proxy == config.proxy
    assert config.warnings == (
        "config/deploy.yml: servers.api.traefik: is Kamal 1's: it is proxy: true now (read as that)",
        "config/deploy.yml: servers.api.healthcheck: is Kamal 1's: the role's proxy.healthcheck is read "
        "instead (ignored)",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "healthcheck: {interval: often}\n", "healthcheck.interval: expected seconds"),
        (
            with_servers("web:\n  hosts: [10.0.0.1]\n  healthcheck: {port: x}\n"),
            "servers.web.healthcheck.port: expected an integer",
        ),
        (MINIMAL + "healthcheck: {max_attempts: many}\n", "healthcheck.max_attempts: expected an integer"),
        (MINIMAL + "healthcheck: {paht: /up}\n", "healthcheck.paht: unknown key (did you mean path?)"),
        (
            MINIMAL + "proxy: {healthcheck: {max_attempts: 0}}\n",
            "proxy.healthcheck.max_attempts: must be at least 1, got 0",
        ),
    ],
)
def test_bad_kamal1_keys_name_their_path(tmp_path, text, message):
    assert error(tmp_path, text).startswith(f"config/deploy.yml: {message}")


def test_cli_prints_the_warnings(tmp_path):
    write(tmp_path, "config/deploy.yml", MINIMAL + "traefik: {}\n")
    done = subprocess.run(
        [sys.executable, "-m", "deployer", "config", "--version", "v1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "pydeploy: warning: config/deploy.yml: traefik: is Kamal 1's: pyproxy replaces Traefik, "
        "configure proxy instead (ignored)\n"
    )


# --- the Rails app of issue 13


RAILS = """
service: kbs
image: acme/kbs
servers:
  web:
    hosts: [10.0.0.1, 10.0.0.2]
  job:
    hosts: [10.0.0.2]
    cmd: bin/jobs
proxy:
  host: kbs.example.com
  app_port: 3000
  healthcheck:
    path: /up
    interval: 2s
registry:
  server: registry.example.com
  username: <%= ENV['CI_REGISTRY_USER'] || 'me' %>
  password: [KAMAL_REGISTRY_PASSWORD]
env:
  clear:
    RAILS_ENV: production
    DB_HOST: kbs-db
    REDIS_URL: redis://kbs-redis:6379/0
  secret: [RAILS_MASTER_KEY, POSTGRES_PASSWORD]
builder:
  arch: amd64
  args:
    GIT_REVISION: <%= `git rev-parse HEAD`.strip %>
asset_path: /rails/public/assets
aliases:
  console: app exec --interactive --reuse "bin/rails console"
  tail: app logs -f
  dbc: app exec --interactive --reuse "bin/rails dbconsole"
volumes: ["kbs_storage:/rails/storage"]
accessories:
  db:
    image: postgres:16
    host: 10.0.0.1
    port: "127.0.0.1:5432:5432"
    env:
      clear: {POSTGRES_USER: kbs, POSTGRES_DB: kbs_production}
      secret: [POSTGRES_PASSWORD]
    directories: [data:/var/lib/postgresql/data]
  redis:
    image: redis:7
    host: 10.0.0.1
    port: 6379
    directories: [data:/data]
"""


@pytest.mark.parametrize("renderer", [{}, {"PYDEPLOY_ERB": "subset"}])
def test_the_rails_app_of_issue_13_loads(repo, renderer):
    write(repo, "config/deploy.yml", RAILS)
    config = load_config(repo, None, "v1", {"PATH": os.environ["PATH"], **renderer})
    web, job = config.roles
    assert (web.name, web.hosts, job.cmd) == ("web", ("10.0.0.1", "10.0.0.2"), "bin/jobs")
    assert config.registry.username == Credential("me")
    assert config.proxy.healthcheck.interval == 2
    assert config.builder.args["GIT_REVISION"] == git(repo, "rev-parse", "HEAD")
    assert config.aliases["console"] == 'app exec --interactive --reuse "bin/rails console"'
    assert [accessory.service for accessory in config.accessories] == ["kbs-db", "kbs-redis"]
    assert config.accessory("redis").port == "6379:6379"
    assert config.warnings == ()
