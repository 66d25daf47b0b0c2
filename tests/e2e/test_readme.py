"""The README's callback example, pasted into bash as a user would, against a live server."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.cli import build_parser
from service.settings import Settings
from tests.helpers import CALLBACK_SECRET, READ_TOKEN

README = Path(__file__).resolve().parents[2] / "README.md"


def example(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\n```bash\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no example {name!r}"
    return match.group(1)


async def test_the_callback_example_works_when_pasted(
    client: TestClient[web.Request, web.Application],
) -> None:
    script = example("callback")
    script = script.replace("SECRET='whsec_...'", f"SECRET='{CALLBACK_SECRET}'")
    script = script.replace("TOKEN='jt_...'", f"TOKEN='{READ_TOKEN}'")
    script = script.replace("http://127.0.0.1:8080", str(client.make_url("")).rstrip("/"))
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    accepted, heartbeat, job, events = (json.loads(line) for line in out.decode().splitlines())
    assert accepted["status"] == heartbeat["status"] == "accepted"
    assert job["job_id"] == "vm-42" and job["run_id"] == 1234
    assert [e["data"]["status"] for e in events["events"]] == ["provisioning", "heartbeat"]
    assert [e["metadata"]["scheme"] for e in events["events"]] == ["standard", "legacy"]


def configuration_rows() -> dict[str, tuple[str, str]]:
    """The README's configuration table: variable -> (default, meaning)."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| variable | default | meaning |") :].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        variable, default, meaning = (cell.strip() for cell in line.strip("|").split(" | "))
        rows[variable.strip("`")] = (default, meaning)
    return rows


def test_the_configuration_table_is_the_settings() -> None:
    declared = {
        info.alias: info.description for info in Settings.model_fields.values() if info.alias
    }
    assert len(declared) == len(Settings.model_fields), "every setting has its variable"
    rows = configuration_rows()
    assert list(rows) == list(declared)
    assert {name: meaning for name, (_, meaning) in rows.items()} == declared
    for name, (default, _) in rows.items():
        field = next(f for f in Settings.model_fields.values() if f.alias == name)
        if field.default not in (None, ()):
            shown = str(field.default).lower()
            assert shown.removeprefix(".") in default.lower(), (name, default)


def test_serve_has_a_flag_for_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name, info in Settings.model_fields.items():
        assert f"--{name.replace('_', '-')} " in help_text, name
        assert f"({info.alias})" in help_text, name
    parsed = parser.parse_args(["serve", "--port", "9001", "--stale-after-s", "2.5"])
    assert (parsed.port, parsed.stale_after_s) == (9001, 2.5)
