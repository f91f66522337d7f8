"""pydeploy's `config/deploy.yml`: Kamal's schema, defaults, errors that name the path, ERB, destinations."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from deployer.config import (
    Buffering,
    BuilderSettings,
    ConfigError,
    Credential,
    EnvSettings,
    Healthcheck,
    JumpHost,
    ProxySettings,
    RegistrySettings,
    SshSettings,
    load_config,
)

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
        ("web: []\n", "servers.web: a role needs at least one host"),
        ("web: {hosts: []}\n", "servers.web.hosts: a role needs at least one host"),
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
            'proxy.ssl: expected true, false or a mapping with certificate_pem and private_key_pem, got "yes"',
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
            "provide a certificate (ssl.certificate_pem/private_key_pem) or a load_balancer",
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
