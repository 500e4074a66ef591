"""Docs that must stay true: the two README commands, CI running exactly the test command, the module map."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the Quickstart has a sh code block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = quickstart_commands()
    assert commands == ["./scripts/demo", "./scripts/test"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    assert ci[-1] == "./scripts/test"
    assert not [c for c in ci if c not in ("set -euo pipefail", 'cd "$(dirname "$0")/.."', "./scripts/test")]


def test_every_module_is_on_the_architecture_map() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for pkg in ("agent", "drivers", "sync", "scorer"):
        for path in sorted((ROOT / pkg).glob("*.py")):
            if path.name == "__init__.py":
                continue
            assert f"`{pkg}/{path.name}`" in doc, f"{pkg}/{path.name} is missing from docs/architecture.md"


def test_every_module_has_a_purpose_docstring() -> None:
    import ast

    for pkg in ("agent", "drivers", "sync", "scorer"):
        for path in sorted((ROOT / pkg).glob("*.py")):
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"


def test_protocol_doc_covers_every_topic_and_message() -> None:
    import json

    doc = (ROOT / "docs" / "protocol.md").read_text()
    schema = json.loads((ROOT / "sync" / "schemas" / "dock-sync-1.json").read_text())
    for name in ("dock-batch/1", "dock-scan/1", "dock-command/1", "dock-ack/1", "dock-birth/1", "dock-state/1",
                 "dock-status/1", "scorer-state/1"):
        assert f"`{name}`" in doc, name
    for leaf in ("events", "birth", "state", "status", "acks"):
        assert f"`docks/{{site}}/{{device}}/{leaf}`" in doc
    assert "`hq/scorers/{instance}/state`" in doc
    for field in schema["$defs"]["scan"]["properties"]:
        assert f"`{field}`" in doc, f"scan field {field} is not documented"
