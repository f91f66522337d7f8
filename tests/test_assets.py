"""What a deploy puts on the test bed's hosts besides the containers, and what users get from it.

Asset bridging (`asset_path`, spec 10): a page rendered by the old version finds its fingerprinted asset
after a deploy of a version that no longer has it, and two deploys later it is gone. The test app's
image vN has /www/assets/app-vN.css only, linked from its page at /.
Error pages and a custom certificate (spec 11): uploaded where the proxy, running as its own user, reads
them; old versions' pages removed. The proxy container itself as `proxy.run` describes it (spec 8.1).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from tests.kamal_support import Poller
from tests.test_pydeploy import HOST, bed, on_host, project, pydeploy  # noqa: F401  (bed: the fixture)
from tests.testbed.fixture import Testbed, testbed  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(600)


def app_project(bed: Testbed, path: Path, proxy_keys: str = "", root_keys: str = "") -> Path:  # noqa: F811
    """The test app health-checked on /cgi-bin/up (which v3, without /up, answers too), with more keys."""
    app = project(bed, path)
    deploy_yml = app / "config" / "deploy.yml"
    text = deploy_yml.read_text().replace("    path: /up\n", "    path: /cgi-bin/up\n")
    text = text.replace(f"  host: {HOST}\n", f"  host: {HOST}\n{proxy_keys}")
    deploy_yml.write_text(text + root_keys)
    return app


async def get(host: str, path: str, tls: ssl.SSLContext | None = None) -> tuple[int, str]:
    """GET `path` for app.test through the host's proxy (over HTTPS with `tls`): the status and body."""
    if tls is None:
        reader, writer = await asyncio.open_connection(host, 80)
    else:
        reader, writer = await asyncio.open_connection(host, 443, ssl=tls, server_hostname=HOST)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


async def v1_asset(host: str) -> str:
    """What a browser holding v1's page asks for next: 200 with v1's stylesheet, or an AssertionError."""
    status, body = await get(host, "/assets/app-v1.css")
    assert (status, body.strip()) == (200, "body { --version: v1; }"), (status, body)
    return "v1 asset"


def deploy(bed: Testbed, app: Path, command: str, version: str) -> None:  # noqa: F811
    done = pydeploy(bed, app, command, "--version", version, "-P")
    assert done.returncode == 0, done.stdout + done.stderr


async def test_the_old_versions_assets_are_served_through_a_deploy_and_pruned_after_the_next(
    bed: Testbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = app_project(bed, tmp_path / "app", root_keys="asset_path: /www/assets\n")
    deploy(bed, app, "setup", "v1")
    pages = {host: await get(host, "/") for host in bed.hosts}
    assert all(page == (200, "<link rel=stylesheet href=/assets/app-v1.css>v1\n") for page in pages.values())

    # The page is loaded; v2 is deployed before the browser asks for the stylesheet the page links.
    load = Poller(bed.hosts, limit=240, fetch=v1_asset)
    await load.during(lambda: deploy(bed, app, "deploy", "v2"))
    assert not load.failed, load.failed[:5]
    assert load.ok > 10, "the asset was asked for all through the deploy"
    for host in bed.hosts:
        assert (await get(host, "/"))[1].endswith("v2\n"), "v2 serves the pages now"
        assert await v1_asset(host), "and v1's asset, after the switch"
        assert (await get(host, "/assets/app-v2.css"))[0] == 200
        own = on_host(bed, host, f"docker run --rm --entrypoint ls {bed.app('v2')} /www/assets 2>&1 || true")
        assert "app-v1.css" not in own, "v2's image has no v1 asset: the bridge served it"

    deploy(bed, app, "deploy", "v3")
    for host in bed.hosts:
        assert (await get(host, "/assets/app-v1.css"))[0] == 404, "two generations back: pruned"
        assert (await get(host, "/assets/app-v2.css"))[0] == 200, "the previous version's: still served"
        assert (await get(host, "/assets/app-v3.css"))[0] == 200
        volumes = on_host(
            bed, host, "ls .kamal/apps/testapp/assets/volumes .kamal/apps/testapp/assets/extracted"
        )
        assert "web-v1" not in volumes and "web-v2" in volumes and "web-v3" in volumes, volumes


async def test_error_pages_and_a_custom_certificate_reach_the_proxy_and_old_pages_go(
    bed: Testbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    certificate = "  ssl:\n    certificate_pem: CERT_PEM\n    private_key_pem: KEY_PEM\n"
    app = app_project(bed, tmp_path / "app", proxy_keys=certificate, root_keys="error_pages_path: public\n")
    ca = trustme.CA()
    issued = ca.issue_cert(HOST)
    (app / "certs").mkdir()
    issued.cert_chain_pems[0].write_to_path(app / "certs" / "cert.pem")
    issued.private_key_pem.write_to_path(app / "certs" / "key.pem")
    with (app / ".kamal" / "secrets-common").open("a") as secrets:
        secrets.write("CERT_PEM=$(cat certs/cert.pem)\nKEY_PEM=$(cat certs/key.pem)\n")
    (app / "public").mkdir()
    (app / "public" / "503.html").write_text("<h1>testapp is away: {{ .Message }}</h1>")
    (app / "public" / "robots.txt").write_text("not an error page\n")
    client = ssl.create_default_context()
    ca.configure_trust(client)

    deploy(bed, app, "setup", "v1")
    pages = ".kamal/proxy/apps-config/testapp/error_pages"
    for host in bed.hosts:
        assert (await get(host, "/version", client)) == (200, "v1\n"), "served with the uploaded certificate"
        key = on_host(bed, host, "stat -c '%a %g' .kamal/proxy/apps-config/testapp/tls/web/key.pem")
        assert key.split() == ["640", "1000"], "readable by the proxy's group only"
        assert on_host(bed, host, f"ls {pages}/v1").split() == ["503.html"], "error pages only"
        on_host(bed, host, "docker exec pyproxy kamal-proxy stop testapp-web --message 'Back at noon'")
        status, body = await get(host, "/version", client)
        assert (status, body) == (503, "<h1>testapp is away: Back at noon</h1>"), "the app's own 503 page"
        on_host(bed, host, "docker exec pyproxy kamal-proxy resume testapp-web")

    deploy(bed, app, "deploy", "v2")
    deploy(bed, app, "deploy", "v3")
    for host in bed.hosts:
        assert on_host(bed, host, f"ls {pages}").split() == ["v2", "v3"], "v1's pages went, v2's stay"
        assert (await get(host, "/version", client)) == (200, "v3\n")


async def test_the_proxy_container_runs_as_proxy_run_says(bed: Testbed, tmp_path: Path) -> None:  # noqa: F811
    run = (
        f"  run:\n    image: {bed.proxy_image}\n    http_port: 8080\n    https_port: 8443\n"
        "    metrics_port: 9090\n    debug: true\n    log_max_size: 5m\n"
    )
    app = app_project(bed, tmp_path / "app")
    deploy_yml = app / "config" / "deploy.yml"
    deploy_yml.write_text(deploy_yml.read_text().replace(f"  image: {bed.proxy_image}\n", run))
    deploy(bed, app, "setup", "v1")
    host = bed.hosts[0]
    reader, writer = await asyncio.open_connection(host, 8080)
    writer.write(f"GET /version HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.read(-1), 10)).endswith(b"\r\n\r\nv1\n"), "served on http_port"
    writer.close()
    inspect = "docker inspect pyproxy --format '{{.HostConfig.LogConfig.Config}} {{.Config.ExposedPorts}}'"
    settings = on_host(bed, host, inspect)
    assert "max-size:5m" in settings and "9090/tcp" in settings, settings
    metrics = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/metrics').status)"
    assert on_host(bed, host, f'docker exec pyproxy python3 -c "{metrics}"').strip() == "200"
    assert '"level": "DEBUG"' in on_host(bed, host, "docker logs pyproxy 2>&1"), "run with --debug"
