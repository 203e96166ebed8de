"""The import direction: the conversation core owns its domain and depends on nothing else of ours.

An AST scan rather than importing the modules, so a lazy import inside a function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import luna_voice.conversation

CORE = Path(luna_voice.conversation.__file__).parent


def _our_imports(path: Path) -> set[str]:
    """Every ``luna_voice`` module a file imports, at any depth (relative imports resolved)."""
    package = "luna_voice.conversation"
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


def test_the_core_imports_only_itself() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) > 5  # the scan really sees the package
    outside = {
        f"{path.name}: {module}"
        for path in files
        for module in _our_imports(path)
        if not (module == "luna_voice.conversation" or module.startswith("luna_voice.conversation."))
    }
    assert not outside, f"the conversation core must not import other layers: {sorted(outside)}"


def test_the_domain_imports_nothing_of_ours() -> None:
    assert _our_imports(CORE / "domain.py") == set()


def test_the_scan_sees_a_backwards_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from luna_voice.providers.base import ProviderError\n    from ..bots import bot\n")
    assert _our_imports(bad) == {"luna_voice.providers.base", "luna_voice.bots"}
