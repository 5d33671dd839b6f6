"""docs/control-protocol.md is generated from the schema and must match it."""

from __future__ import annotations

from pathlib import Path

from bridge.control.commands import COMMANDS, parameter_schema
from bridge.control.docs import render_protocol_doc
from bridge.control.osc import osc_address_map
from bridge.control.wire import ERROR_CODES

DOC = Path(__file__).resolve().parent.parent / "docs" / "control-protocol.md"


def test_committed_doc_equals_the_generated_one() -> None:
    assert DOC.read_text(encoding="utf-8") == render_protocol_doc(), (
        "docs/control-protocol.md is stale: run "
        "`python -m bridge.control.docs > docs/control-protocol.md`")


def test_doc_covers_commands_codes_params_osc_and_security() -> None:
    text = render_protocol_doc()
    for name in COMMANDS:
        assert f"| `{name}` |" in text
    for code in ERROR_CODES:
        assert f"| `{code}` |" in text
    for param in parameter_schema():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{param['name']}` |"))
        assert ("rebuild" in row) != param["live"] or param["name"] == "t_index_list"
    for entry in osc_address_map():
        assert f"`{entry.address}`" in text
    for topic in ("## Security", "CURVE", "token", "too_large", "allow_remote", "## Events"):
        assert topic in text
