"""The shipped Asterisk configuration says what a real Asterisk 22 does with it: options where
Asterisk reads them, units as Asterisk counts them, a fallback that does not end in silence."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "asterisk-conf"


@dataclass
class Option:
    key: str
    value: str
    comment: list[str] = field(default_factory=list)  # the comment lines right above it


def _sections(name: str) -> dict[str, list[Option]]:
    """Sections of an Asterisk .conf file with their options and the comments above each."""
    sections: dict[str, list[Option]] = {}
    current: list[Option] | None = None
    comment: list[str] = []
    for raw in (CONF / name).read_text().splitlines():
        line = raw.strip()
        if line.startswith(";"):
            comment.append(line.lstrip("; "))
            continue
        if not line:
            comment = []
            continue
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), [])
        else:
            assert current is not None, f"{name}: option outside a section: {line}"
            key, _, value = line.partition("=")
            current.append(Option(key.strip().rstrip(">").strip(), value.split(";")[0].strip(), comment))
        comment = []
    return sections


def _option(options: list[Option], key: str) -> Option:
    found = [o for o in options if o.key == key]
    assert len(found) == 1, (key, found)
    return found[0]


def test_manager_writetimeout_is_set_per_user_not_in_general():
    sections = _sections("manager.conf")
    # Under [general] Asterisk logs "Invalid keyword <writetimeout>" and ignores it.
    assert "writetimeout" not in {o.key for o in sections["general"]}
    users = [name for name, options in sections.items()
             if name != "general" and any(o.key == "secret" for o in options)]
    assert users == ["callbridge", "callbridge-test"]
    for user in users:
        assert _option(sections[user], "writetimeout").value == "1000"


def test_http_session_keep_alive_is_in_milliseconds():
    option = _option(_sections("http.conf")["general"], "session_keep_alive")
    text = " ".join(option.comment)
    assert "milliseconds" in text and "(seconds)" not in text
    assert option.value == "15000" and "15 s" in text


def test_rtp_dtmftimeout_and_checksums_are_described_as_asterisk_reads_them():
    general = _sections("rtp.conf")["general"]
    dtmf = _option(general, "dtmftimeout")
    text = " ".join(dtmf.comment)
    # The longest a digit without an end marker may last, counted in samples.
    assert "samples" in text and "end marker" in text and "interval" not in text
    checksums = _option(general, "rtpchecksums")
    assert checksums.value == "yes"
    assert "Checksums on IPv4 UDP." not in checksums.comment


def _context(name: str) -> list[str]:
    text = (CONF / "extensions.conf").read_text()
    body = re.split(rf"^\[{re.escape(name)}\]", text, maxsplit=1, flags=re.M)[1]
    lines = []
    for line in body.splitlines():
        if line.startswith("["):
            break
        if line.startswith(("exten", " same")):
            lines.append(line.strip())
    return lines


def test_fallback_queue_is_guarded_and_the_announcement_plays():
    lines = _context("callbridge-fallback")
    queue = next(i for i, line in enumerate(lines) if "Queue(" in line)
    # Without queues.conf app_queue is not loaded and Queue() would end the call in silence.
    assert 'IFMODULE(app_queue.so)' in lines[queue - 1] and "?nobody" in lines[queue - 1]
    assert "(nobody),Playback(" in lines[queue + 1]


def test_every_inbound_context_tries_the_next_instance_on_model_unavailable():
    for context in ("callbridge-inbound", "callbridge-ari-inbound", "callbridge-ari-websocket"):
        lines = _context(context)
        assert any('"MODEL_UNAVAILABLE"]?next' in line for line in lines), context


def test_readme_names_the_websocket_application_and_audiosocket_formats():
    readme = (CONF / "README.md").read_text()
    assert "CALLBRIDGE_ARI__APP=callbridge-ws" in readme
    assert "ulaw and alaw mean slin 8 kHz" in " ".join(readme.split())
    assert "20 ms apart for AudioSocket" not in readme
