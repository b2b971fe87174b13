from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tenants.config import AudioMode, TenantError
from tenants.directory import MatchKind
from tenants.file import (
    FileDirectory,
    TenantFileError,
    TenantTable,
    embedded_tenants_file,
    load_tenants_file,
    parse_tenants_yaml,
)

ONE_TENANT = """
tenants:
  - slug: acme
    name: Acme
    numbers: ["+5511988880001"]
    voice: alloy
"""


def test_embedded_example_has_the_documented_tenants() -> None:
    table = load_tenants_file(embedded_tenants_file())
    demo = table.explain("+5511999990001")
    second = table.explain("+5511999990002")
    assert demo is not None and second is not None
    assert demo.tenant.slug == "demo" and demo.match is MatchKind.EXACT
    assert demo.tenant.greeting  # the agent speaks first on the demo line
    assert second.tenant.slug != "demo"
    assert second.tenant.instructions != demo.tenant.instructions
    assert second.tenant.voice != demo.tenant.voice
    block = table.explain("+5511999990150")
    assert block is not None and block.match is MatchKind.PREFIX and block.pattern == "+55119999901*"
    assert block.tenant.audio_mode is AudioMode.PASSTHROUGH
    # defaults: merged under every tenant
    assert {t.language for t in table.tenants} == {"pt"}
    assert table.explain("+15550000000") is None


def test_unset_fields_take_documented_defaults() -> None:
    tenant = parse_tenants_yaml(ONE_TENANT).tenants[0]
    assert tenant.tenant_id == "acme"  # defaults to the slug
    assert tenant.temperature == 0.8
    assert tenant.max_output_tokens == "inf"
    assert tenant.recording is True
    assert tenant.turn_detection.type == "server_vad"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenants:\n  - slug: acme\n    voise: alloy\n", r"tenants\[0\] \(acme\): unknown key 'voise'"),
        ("tenants:\n  - slug: acme\n    temperature: 7\n", r"\(acme\): temperature"),
        ("tenants:\n  - slug: Acme Inc\n", r"slug must be lowercase"),
        ("tenants:\n  - slug: a\n    numbers: [x1]\n", r"\(a\): numbers: 'x1' is not a telephone number"),
        ("tenants:\n  - slug: a\n    numbers: '+5511'\n", r"numbers must be a list"),
        (
            "tenants:\n  - slug: a\n    numbers: ['+5511999990001']\n"
            "  - slug: b\n    numbers: ['011 99999-0001']\n",
            r"\(b\): number \+5511999990001 is already listed by 'a'",
        ),
        ("tenants:\n  - slug: a\n  - slug: a\n", r"slug 'a' is used by another tenant"),
        ("tenants:\n  - slug: a\n    voice: x\n    voice: y\n", r"duplicate key 'voice'"),
        ("tenant:\n  - slug: a\n", r"unknown top-level key\(s\) 'tenant'"),
        ("version: 2\ntenants: []\n", r"version 2 is not supported"),
        ("defaults: {numbers: ['1']}\ntenants: []\n", r"defaults cannot set 'numbers'"),
        ("tenants: [\n", r"not valid YAML"),
        ("tenants:\n  - slug: a\n    media_token: short\n", r"\(a\): media_token: .*at least 16"),
        ("- a\n", r"top level must be a mapping"),
    ],
)
def test_invalid_files_say_why(text: str, message: str) -> None:
    with pytest.raises(TenantError, match=message):
        parse_tenants_yaml(text)


def test_media_token_is_read_and_kept_out_of_repr() -> None:
    token = "acme-media-token-0123456789"
    tenant = parse_tenants_yaml(ONE_TENANT + f"    media_token: {token}\n").tenants[0]
    assert tenant.media_token == token
    assert token not in repr(tenant)
    assert parse_tenants_yaml(ONE_TENANT).tenants[0].media_token is None


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "tenants:\n  - slug: a\n    colour: red\n    numbers: ['1001']\n"
        "  - slug: b\n    speed: 9\n    numbers: ['1001', 'x']\n"
    )
    with pytest.raises(TenantFileError) as info:
        parse_tenants_yaml(text, source="t.yaml")
    assert info.value.source == "t.yaml"
    assert sorted(info.value.problems) == sorted(
        [
            "tenants[0] (a): unknown key 'colour'",
            "tenants[1] (b): number 1001 is already listed by 'a'",
            "tenants[1] (b): numbers: 'x' is not a telephone number or extension",
            "tenants[1] (b): speed: Input should be less than or equal to 1.5",
        ]
    )


def test_inactive_tenant_is_not_found() -> None:
    table = parse_tenants_yaml(ONE_TENANT.replace("voice: alloy", "active: false"))
    assert table.explain("+5511988880001") is None
    assert table.by_slug("acme") is not None


def test_yaml_merge_keys_share_settings() -> None:
    text = """
shared: &shared
  voice: ash
tenants:
  - <<: *shared
    slug: a
"""
    with pytest.raises(TenantError, match="unknown top-level key"):
        parse_tenants_yaml(text)
    text = text.replace("shared: &shared\n  voice: ash\n", "defaults: &shared\n  voice: ash\n")
    assert parse_tenants_yaml(text).tenants[0].voice == "ash"


async def test_directory_normalises_what_it_is_asked(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(ONE_TENANT)
    directory = await FileDirectory.open(path)
    for dialled in ("+5511988880001", "(11) 98888-0001", "sip:011988880001@pbx;user=phone"):
        found = await directory.explain(dialled)
        assert found is not None and found.tenant.slug == "acme" and found.number == "+5511988880001"
    assert await directory.explain("not a number") is None
    assert [t.slug for t in await directory.list_tenants()] == ["acme"]


async def test_reload_keeps_last_good_version_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(ONE_TENANT)
    directory = await FileDirectory.open(path)
    changes: list[int] = []
    directory.add_change_listener(lambda: changes.append(1))

    path.write_text(ONE_TENANT.replace("voice: alloy", "voice: alloy\n    colour: red"))
    with caplog.at_level(logging.ERROR, logger="tenants.file"):
        assert await directory.reload() is False
    assert "unknown key 'colour'" in caplog.text
    assert directory.last_error is not None and "colour" in directory.last_error
    kept = await directory.resolve("+5511988880001")
    assert kept is not None and kept.voice == "alloy"
    assert changes == []

    path.write_text(ONE_TENANT.replace("voice: alloy", "voice: verse"))
    assert await directory.reload() is True
    changed = await directory.resolve("+5511988880001")
    assert changed is not None and changed.voice == "verse"
    assert changes == [1] and directory.last_error is None


async def test_watch_reloads_on_edit_and_on_replace(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(ONE_TENANT)
    directory = await FileDirectory.open(path, watch_interval=0.02)
    changed = asyncio.Event()
    directory.add_change_listener(changed.set)
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(directory.watch())
        # An in-place edit of a different size.
        path.write_text(ONE_TENANT.replace("voice: alloy", "voice: coral"))
        await asyncio.wait_for(changed.wait(), 5)
        tenant = await directory.resolve("+5511988880001")
        assert tenant is not None and tenant.voice == "coral"
        # Replaced by rename, same size: the inode changes.
        changed.clear()
        replacement = tmp_path / "tenants.yaml.new"
        replacement.write_text(ONE_TENANT.replace("voice: alloy", "voice: sage1"))
        os.replace(replacement, path)
        await asyncio.wait_for(changed.wait(), 5)
        tenant = await directory.resolve("+5511988880001")
        assert tenant is not None and tenant.voice == "sage1"
        # A file that disappears for a while (replaced by a slow deploy) is waited for.
        changed.clear()
        path.unlink()
        await asyncio.sleep(0.1)
        assert not watcher.done() and not changed.is_set()
        path.write_text(ONE_TENANT.replace("voice: alloy", "voice: ballad"))
        await asyncio.wait_for(changed.wait(), 5)
        tenant = await directory.resolve("+5511988880001")
        assert tenant is not None and tenant.voice == "ballad"
        # An invalid edit is not applied; the watcher keeps running.
        path.write_text("tenants: [")
        await asyncio.sleep(0.2)
        assert not watcher.done()
        assert directory.last_error is not None
        tenant = await directory.resolve("+5511988880001")
        assert tenant is not None and tenant.voice == "ballad"
        watcher.cancel()


_SCALARS = st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(-3, 3) | st.text(max_size=12)
_YAML_DATA = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "tenants",
                    "slug",
                    "numbers",
                    "voice",
                    "speed",
                    "defaults",
                    "turn_detection",
                    "type",
                    "name",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@given(_YAML_DATA)
def test_any_document_gives_a_table_or_tenant_error(document: object) -> None:
    try:
        table = parse_tenants_yaml(yaml.safe_dump(document))
    except TenantError as exc:
        assert str(exc)
        return
    for tenant in table.tenants:
        assert tenant.slug


@given(st.text(max_size=200))
def test_any_text_gives_a_table_or_tenant_error(text: str) -> None:
    try:
        table = parse_tenants_yaml(text)
    except TenantError as exc:
        assert str(exc).startswith("tenants file: ")
    else:
        assert isinstance(table, TenantTable)


@pytest.mark.parametrize("text", ["", "\n", "# being written\n", "version: 1\n", "tenants:\n"])
async def test_empty_or_half_written_file_keeps_the_last_good_tenants(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(ONE_TENANT)
    directory = await FileDirectory.open(path)
    path.write_text(text)
    with caplog.at_level(logging.ERROR, logger="tenants.file"):
        assert await directory.reload() is False
    assert "tenants: []" in caplog.text  # the log says how to mean "no tenants"
    assert await directory.resolve("+5511988880001") is not None
    with pytest.raises(TenantFileError):
        parse_tenants_yaml(text)


async def test_explicitly_empty_tenant_list_is_applied_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(ONE_TENANT)
    directory = await FileDirectory.open(path)
    path.write_text("version: 1\ntenants: []\n")
    with caplog.at_level(logging.WARNING, logger="tenants.file"):
        assert await directory.reload() is True
    assert "lists no tenants" in caplog.text
    assert [r.levelno for r in caplog.records if "lists no tenants" in r.message] == [logging.WARNING]
    assert await directory.resolve("+5511988880001") is None


async def test_watch_waits_for_the_file_to_settle(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(ONE_TENANT)
    directory = await FileDirectory.open(path, watch_interval=0.2)
    seen: list[list[str]] = []
    done = asyncio.Event()

    def changed() -> None:
        seen.append([t.slug for t in directory.table.tenants])
        done.set()

    directory.add_change_listener(changed)
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(directory.watch())
        # A writer that truncates, then appends a little at a time: part-way through, the file
        # is often valid YAML with only the first tenant, but it never settles until the end.
        second = ONE_TENANT.split("tenants:\n", 1)[1].replace("acme", "beta").replace(
            "+5511988880001", "+5511988880002")
        text = ONE_TENANT + second
        with path.open("w") as out:
            for start in range(0, len(text), 10):
                out.write(text[start:start + 10])
                out.flush()
                await asyncio.sleep(0.01)
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0.5)
        watcher.cancel()
    assert seen == [["acme", "beta"]]
