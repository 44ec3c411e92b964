"""The package's import rules (docs/architecture.md, "Layers"): which sub-package may import which.

An AST walk over every module of voiceload/ (imports inside functions count too), plus one real
import of the `run` process's modules to prove that neither pjsua2 nor the media engine loads there.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "voiceload"

# What each part of voiceload may import from voiceload (itself always). A part is a sub-package or a
# top-level module. `cli` and `__main__` are the composition root and may import anything.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "protocol": {"errors"},
    "audio": {"errors", "protocol"},
    "core": {"errors", "protocol", "audio"},
    "media": {"errors", "protocol", "audio"},
    "sip": {"errors", "protocol", "core", "media"},
    "rasa": {"errors"},
    "results": {"errors", "protocol", "core"},
    "report": {"errors", "protocol", "audio", "core", "results"},
    "agent": {"errors", "protocol", "audio", "core", "sip", "media", "results", "rasa"},
    "run": {"errors", "protocol", "audio", "core", "results", "report", "rasa", "sip.lite"},
    "sut": {"errors", "protocol", "audio", "core", "sip", "rasa"},
    "tools": {"errors", "audio", "sip.message", "media.engine"},  # media.engine: the codecs' decoders
}
# Third-party libraries that only their adapter may import.
ADAPTERS = {"pjsua2": {"sip.ua"}, "aiomqtt": {"results.bus"}, "paho": {"results.bus"}, "amqtt": {"results.broker"}}
# Pure parts: no library that does I/O of its own.
PURE = {"core", "audio", "protocol", "errors"}
IO_LIBS = {"pjsua2", "aiomqtt", "paho", "amqtt", "aiohttp", "socket", "subprocess", "asyncio", "typer", "rich"}
# audio.recordings synthesises recordings with espeak-ng/sox: the one process-spawning module of audio/.
PURE_EXCEPTIONS = {("audio.recordings", "subprocess")}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every absolute module name `path` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the rules read absolute names)"
            base = node.module or ""
            found.add(base)
            if base == "voiceload" or base.startswith("voiceload."):
                found.update(f"{base}.{alias.name}" for alias in node.names)  # `from voiceload.sip import lite`
    return found


def part_of(module: str) -> str:
    return module.split(".")[0] if module else module


def allows(allowed: set[str], target: str) -> bool:
    """`target` (a voiceload module, without the prefix) is in an allowed part or module."""
    return any(target == a or target.startswith(a + ".") for a in allowed)


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "voiceload")
def test_imports_stay_inside_the_allowed_layers(path: Path) -> None:
    me = module_name(path)
    part = part_of(me)
    if part in ("", "cli", "__main__"):
        return
    assert part in ALLOWED, f"{me}: a new part of voiceload; give it a rule in ALLOWED (and docs/architecture.md)"
    imported = imports_of(path)
    for target in sorted(imported):
        root = target.split(".")[0]
        if root == "voiceload":
            inner = target.removeprefix("voiceload").lstrip(".")
            if not inner or part_of(inner) == part:
                continue
            # `from voiceload.sip import lite` adds both voiceload.sip and voiceload.sip.lite: judge the deeper one
            if any(t.startswith(target + ".") for t in imported):
                continue
            rule = sorted(ALLOWED[part])
            assert allows(ALLOWED[part], inner), f"{me} imports {target}: {part} may import only {rule}"
        elif root in ADAPTERS:
            assert me in ADAPTERS[root], f"{me} imports {root}: only {sorted(ADAPTERS[root])} may"
        if part in PURE and root in IO_LIBS:
            assert (me, root) in PURE_EXCEPTIONS, f"{me} imports {root}: {part} is pure (no I/O libraries)"


def test_the_rules_name_only_parts_that_exist() -> None:
    parts = {part_of(module_name(p)) for p in MODULES} - {"", "cli", "__main__"}
    assert set(ALLOWED) == parts
    for allowed in ALLOWED.values():
        for a in allowed:
            assert (PACKAGE / a.replace(".", "/")).with_suffix(".py").exists() or (PACKAGE / a).is_dir(), a


def loaded_by(modules: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """The `forbidden` modules (names or prefixes) that importing `modules` loads, in a fresh interpreter."""
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(','.join(sorted(m for m in sys.modules if m in {forbidden!r} or m.startswith({forbidden!r}))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_the_run_process_loads_no_pjsua2_no_media_engine_and_no_agent() -> None:
    """What `voiceload run` and `voiceload capacity` import, imported for real."""
    run = ("voiceload.run.coordinator", "voiceload.run.capacity", "voiceload.run.live", "voiceload.report")
    assert loaded_by(run, ("pjsua2", "voiceload.agent", "voiceload.sut", "voiceload.media", "voiceload.sip.ua")) == []


def test_the_reference_bot_loads_no_caller_side() -> None:
    assert loaded_by(("voiceload.sut.bot", "voiceload.sut.gateway"), ("voiceload.agent", "voiceload.run")) == []


def test_the_rest_agent_loads_no_pjsua2_and_no_media_engine() -> None:
    rest = ("voiceload.agent.main", "voiceload.agent.rest")
    assert loaded_by(rest, ("pjsua2", "voiceload.media", "voiceload.sip.ua")) == []


def test_the_layers_table_in_docs_lists_every_module_of_the_tree() -> None:
    """docs/architecture.md's "Layers" table names each sub-package's files: it must match the tree."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    section = doc.split("### Layers", 1)[1].split("\n\n", 2)[1]
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`") or not cells[0].endswith("/`"):
            continue
        package = PACKAGE / cells[0].strip("`/")
        named = set(re.findall(r"`([\w.]+\.(?:py|c|h|css))`", cells[2]))
        on_disk = {p.name for p in package.iterdir() if p.suffix in (".py", ".c", ".h", ".css")} - {"__init__.py"}
        assert named == on_disk, f"{cells[0]}: the table names {sorted(named - on_disk)} that are not there " \
                                 f"and misses {sorted(on_disk - named)}"
