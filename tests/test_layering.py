"""The import direction: the conversation core owns its domain and depends on nothing else of ours.

An AST scan rather than importing the modules, so a lazy import inside a function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import luna_voice.api
import luna_voice.bridge
import luna_voice.conversation

CORE = Path(luna_voice.conversation.__file__).parent


def _our_imports(path: Path, package: str = "luna_voice.conversation") -> set[str]:
    """Every ``luna_voice`` module a file imports, at any depth (relative imports resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "luna_voice"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module and node.module.split(".")[0] == "luna_voice":
                found.add(node.module)
    return found


@pytest.mark.parametrize("package", [luna_voice.conversation, luna_voice.bridge])
def test_the_core_and_the_wire_protocol_import_only_themselves(package) -> None:  # type: ignore[no-untyped-def]
    name = package.__name__
    files = sorted(Path(package.__file__).parent.glob("*.py"))
    assert len(files) >= 2  # the scan really sees the package
    outside = {
        f"{path.name}: {module}"
        for path in files
        for module in _our_imports(path, name)
        if not (module == name or module.startswith(f"{name}."))
    }
    assert not outside, f"{name} must not import other layers: {sorted(outside)}"


def test_the_domain_imports_nothing_of_ours() -> None:
    assert _our_imports(CORE / "domain.py") == set()


def test_the_scan_sees_a_backwards_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from luna_voice.providers.base import ProviderError\n    from ..bots import bot\n")
    assert _our_imports(bad) == {"luna_voice.providers.base", "luna_voice.bots"}


def test_the_api_reaches_bots_only_through_the_service_interface() -> None:
    """Routes see ``api.port.LunaService``: no import of the service that assembles them, nor of bots/."""
    api = Path(luna_voice.api.__file__).parent
    imports = {module for path in api.glob("*.py") for module in _our_imports(path, "luna_voice.api")}
    assert "luna_voice.api.port" in imports  # the scan really sees the routes' imports
    reaching = sorted(m for m in imports if m == "luna_voice.service" or m.startswith("luna_voice.bots"))
    assert not reaching, f"the api must not import these: {reaching}"


TESTS = Path(__file__).parent


def _imported_test_modules(path: Path) -> set[str]:
    """Every ``test_*`` module a file imports, at any depth: shared helpers belong in helper modules, because a
    test module imported by another runs its collection twice and couples unrelated tests (issue 16)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module} if node.module else set()
            names |= {a.name for a in node.names if a.name.startswith("test_")}  # ``from tests import test_x``
    return {name for name in names if any(part.startswith("test_") for part in name.split("."))}


def test_test_modules_do_not_import_each_other() -> None:
    files = sorted(TESTS.glob("test_*.py"))
    assert len(files) > 10  # the scan really sees the suite
    found = {f"{path.name}: {module}" for path in files for module in _imported_test_modules(path)}
    assert not found, f"move shared helpers into a helper module (roomtools, pageless, ...): {sorted(found)}"


def test_the_scan_sees_a_test_module_imported(tmp_path: Path) -> None:
    bad = tmp_path / "test_bad.py"
    bad.write_text(
        "from test_pipeline import LoudIsVoiced\nimport tests.test_clock\nfrom tests import test_api\n"
        "def f():\n    import test_webhooks\n    from roomtools import until\n"
    )
    assert _imported_test_modules(bad) == {"test_pipeline", "tests.test_clock", "test_api", "test_webhooks"}
