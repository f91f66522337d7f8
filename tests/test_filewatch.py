"""Held responses and the edits of their files (thruster/filewatch.py, thruster/rendered.py), on real
files: inotify where it works, a stat per use where it cannot watch."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from thruster import filewatch
from thruster.rendered import RenderedResponses


async def next_turn() -> None:
    """Let the loop turn once, as it does between batches of requests."""
    await asyncio.sleep(0)


def hold(rendered: RenderedResponses, path: Path) -> tuple:
    key = (str(path).encode(), None)
    rendered.put(key, str(path), path.stat(), b"HTTP/1.1 200 OK\r\n", path.read_bytes())
    return key


@pytest.fixture
async def rendered() -> AsyncIterator[RenderedResponses]:
    responses = RenderedResponses()
    yield responses
    responses.watch.close()


@pytest.fixture
def page(tmp_path: Path) -> Path:
    path = tmp_path / "site" / "page.html"
    path.parent.mkdir()
    path.write_bytes(b"<p>one</p>")
    return path


async def test_an_edit_that_keeps_size_and_time_still_drops_the_held_response(rendered, page):
    key = hold(rendered, page)
    assert rendered.get(key) is not None
    assert rendered.get(key).directory is not None, "the directory is watched"
    before = page.stat()
    page.write_bytes(b"<p>two</p>")
    os.utime(page, ns=(before.st_atime_ns, before.st_mtime_ns))  # a stat could not tell
    await next_turn()
    assert rendered.get(key) is None


async def test_a_use_reads_the_kernels_events_before_the_loop_does(rendered, page):
    key = hold(rendered, page)
    assert rendered.get(key) is not None
    await next_turn()
    page.write_bytes(b"<p>two</p>")
    # No turn of the loop between the edit and the use (a request read in the same batch of events):
    # the use itself must read the pending event.
    assert rendered.get(key) is None


@pytest.mark.parametrize("change", ["replace", "remove", "chmod"])
async def test_replacing_removing_or_changing_the_file_drops_it(rendered, page, change):
    key = hold(rendered, page)
    if change == "replace":  # as a deploy swaps an asset: a new file renamed over the old
        new = page.with_name("page.html.new")
        new.write_bytes(b"<p>new</p>")
        os.replace(new, page)
    elif change == "remove":
        page.unlink()
    else:
        page.chmod(0o600)
    await next_turn()
    assert rendered.get(key) is None


async def test_a_change_elsewhere_keeps_the_held_response(rendered, page, tmp_path):
    key = hold(rendered, page)
    (tmp_path / "elsewhere.txt").write_text("unrelated")
    await next_turn()
    assert rendered.get(key) is not None


async def test_a_removed_directory_is_watched_anew_when_it_comes_back(rendered, page):
    key = hold(rendered, page)
    page.unlink()
    page.parent.rmdir()
    await next_turn()
    assert rendered.get(key) is None
    page.parent.mkdir()
    page.write_bytes(b"<p>back</p>")
    key = hold(rendered, page)
    assert rendered.get(key).body == b"<p>back</p>"
    page.write_bytes(b"<p>gone again</p>")
    await next_turn()
    assert rendered.get(key) is None


async def test_without_a_watch_each_use_stats_the_file(rendered, page, monkeypatch):
    monkeypatch.setattr(filewatch, "MAX_WATCHED", 0)  # as when the kernel's watch limit is reached
    key = hold(rendered, page)
    assert rendered.get(key).directory is None
    page.write_bytes(b"<p>three</p>")  # another length: a stat tells
    assert rendered.get(key) is None


async def test_a_path_through_a_symlink_is_checked_by_a_stat(rendered, page, tmp_path):
    link = tmp_path / "link.html"  # as an app may name a file in X-Sendfile
    link.symlink_to(page)
    key = hold(rendered, link)
    assert rendered.get(key).directory is None, "the change would happen outside the link's directory"
    page.write_bytes(b"<p>edited through its real name</p>")
    assert rendered.get(key) is None


async def test_a_directory_swapped_for_another_by_that_name_is_watched_anew(rendered, page):
    site = page.parent
    hold(rendered, page)
    site.rename(site.with_name("site.old"))  # as a deploy swaps a release's directory
    site.mkdir()
    page.write_bytes(b"<p>new release</p>")
    await next_turn()
    key = hold(rendered, page)
    assert rendered.get(key).body == b"<p>new release</p>"
    page.write_bytes(b"<p>edited in the new release</p>")
    await next_turn()
    assert rendered.get(key) is None


async def test_a_watch_ends_at_its_first_change_and_the_next_response_starts_one(rendered, page):
    key = hold(rendered, page)
    (page.parent / "log.txt").write_text("the app writes here")
    await next_turn()
    assert rendered.get(key) is None
    assert rendered.watch.by_path == {}, "no watch on a directory that holds nothing now"
    key = hold(rendered, page)
    assert list(rendered.watch.by_path) == [str(page.parent)]
    assert rendered.get(key) is not None


async def test_after_close_nothing_held_is_trusted(rendered, page):
    key = hold(rendered, page)
    rendered.watch.close()
    assert rendered.get(key) is None
