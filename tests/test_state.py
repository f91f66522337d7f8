"""The saved state at start-up: a first boot says so as kamal-proxy does, and a damaged state file is
kept, not overwritten, with every service that can still be read restored."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from proxy.state import StateStore


def state_file(workdir: Path) -> Path:
    return workdir / "config" / "pyproxy" / "pyproxy.state"


async def test_first_boot_says_there_is_no_previous_state(proxy):
    line = await proxy.wait_for_log("No previous state to restore")
    assert line["level"] == "INFO"


async def test_a_truncated_state_file_is_moved_aside_and_what_it_holds_is_restored(make_proxy, upstreams):
    blue, green = upstreams
    first = await make_proxy()
    assert (await first.deploy("web", blue.address, args=("--host=web.test",))).status == 0
    assert (await first.deploy("api", green.address, args=("--host=api.test",))).status == 0
    await first.stop()
    path = state_file(first.workdir)
    whole = path.read_text()
    cut = whole[: whole.index('"api"') + 10]  # the second service cut midway
    path.write_text(cut)

    second = await make_proxy()
    error = await second.wait_for_log("Saved state is damaged: restoring what could be read")
    assert error["level"] == "ERROR"
    assert error["path"] == str(path)
    assert "not valid JSON" in error["error"]
    aside = path.parent / error["moved_to"].rsplit("/", 1)[1]
    assert aside.read_text() == cut, "the damaged file must be kept as it was"
    assert error["services"] == 1
    assert {s["name"] for s in json.loads(path.read_text())} == {"web"}, "saved anew at once"
    session = aiohttp.ClientSession()
    async with session, session.get(second.url, headers={"Host": "web.test"}) as response:
        assert (await response.json())["upstream"] == "blue"
    # The next change writes a new state file; the damaged copy stays untouched.
    assert (await second.deploy("api", green.address, args=("--host=api.test",))).status == 0
    assert {s["name"] for s in json.loads(path.read_text())} == {"web", "api"}
    assert aside.read_text() == cut


async def test_a_state_file_that_is_not_json_starts_empty_but_is_kept(make_proxy, upstreams):
    first = await make_proxy()
    path = state_file(first.workdir)
    await first.stop()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x01 not json at all")
    second = await make_proxy()
    error = await second.wait_for_log("Saved state is damaged: restoring what could be read")
    assert error["services"] == 0
    assert json.loads(path.read_text()) == []
    assert (path.parent / error["moved_to"].rsplit("/", 1)[1]).read_bytes() == b"\x00\x01 not json at all"


def test_salvage_reads_each_whole_service_of_a_cut_list(tmp_path):
    path = tmp_path / "s.state"
    path.write_text('[{"name": "a"}, {"name": "b", "options": {"hosts": ["x"]}}, {"name": "c", "opt')
    saved = StateStore(path).load()
    assert [s["name"] for s in saved.services] == ["a", "b"]
    assert saved.problem and saved.moved_to is not None and saved.moved_to.exists()


def test_a_valid_state_file_loads_untouched(tmp_path):
    path = tmp_path / "s.state"
    path.write_text('[{"name": "a"}]')
    saved = StateStore(path).load()
    assert (saved.services, saved.problem, saved.found) == ([{"name": "a"}], "", True)
    assert path.exists()


async def test_a_saved_service_that_cannot_be_restored_stays_in_the_state_file(
    make_proxy, upstreams, tmp_path
):
    blue, green = upstreams
    first = await make_proxy()
    assert (await first.deploy("plain", blue.address, args=("--host=plain.test",))).status == 0
    await first.stop()
    path = state_file(first.workdir)
    broken = {
        "name": "tls-app",
        "options": {
            "hosts": ["tls.test"],
            "tls_enabled": True,
            "tls_certificate_path": str(tmp_path / "gone.pem"),
            "tls_private_key_path": str(tmp_path / "gone.key"),
        },
        "active_targets": [green.address],
    }
    path.write_text(json.dumps([*json.loads(path.read_text()), broken]))
    second = await make_proxy()
    await second.wait_for_log("Skipping saved service (kept in the state file)", service="tls-app")
    assert (await second.deploy("other", green.address, args=("--host=other.test",))).status == 0
    saved = {s["name"]: s for s in json.loads(path.read_text())}
    assert set(saved) == {"plain", "other", "tls-app"}
    assert saved["tls-app"] == broken
