"""Architecture rules, checked: the core imports no hardware library, and heavy drivers load only on demand."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

HARDWARE = {"serial", "evdev", "cv2", "pyzbar", "zxingcpp", "paho"}
# The one module of agent/ that composes drivers; it may import the drivers package (lazily built).
COMPOSITION = {"agent/app.py", "agent/loop.py"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


# Tools of the CLI that render or decode images import OpenCV / zxing-cpp inside their functions, only when used.
TOOLS = {"command_sheet.py", "cli.py"}


def module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_imports_no_hardware_library() -> None:
    for path in sorted((ROOT / "agent").glob("*.py")):
        bad = (module_level_imports(path) if path.name in TOOLS else imports_of(path)) & HARDWARE
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}; hardware belongs in drivers/"


def test_barcode_grammar_is_pure() -> None:
    allowed = {"__future__", "re", "dataclasses", "typing", "collections"}
    assert imports_of(ROOT / "agent" / "barcode.py") <= allowed


def test_only_drivers_import_pyserial() -> None:
    for pkg in ("agent", "sync"):
        for path in (ROOT / pkg).glob("*.py"):
            assert "serial" not in imports_of(path), path


def loaded_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return {m.split(".")[0] for m in json.loads(out.stdout.splitlines()[-1])}


def test_help_and_parse_load_nothing_heavy() -> None:
    mods = loaded_modules("from agent.cli import build_parser; build_parser().format_help()")
    assert not mods & (HARDWARE | {"pydantic", "sqlite_utils", "sqlite3"}), mods & (HARDWARE | {"pydantic"})
    mods = loaded_modules("from agent.cli import main; main(['parse', '99M123456000000123456'])")
    assert not mods & (HARDWARE | {"pydantic", "sqlite_utils"})


def test_serial_only_agent_never_loads_evdev_or_opencv() -> None:
    code = (
        "from agent.settings import load_settings\n"
        "from pathlib import Path\n"
        "import drivers, agent.app\n"
        "s = load_settings(Path('config/site.example.toml'))\n"
        "d = [drivers.build(c) for c in s.scanners]\n"
    )
    mods = loaded_modules(code)
    assert "serial" in mods
    assert not mods & {"evdev", "cv2", "pyzbar", "zxingcpp", "numpy"}
