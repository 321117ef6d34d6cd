"""The package reads as the data flow: each stage imports only itself and the stages
before it, and the model families' facts import no stage at all."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "parity"

#: The stages in data-flow order, then the front doors. Shared records and facts
#: (rank 0) come before every stage.
RANKS: dict[str, int] = {
    "parity": 0,
    "parity.errors": 0,
    "parity.settings": 0,
    "parity.stack": 0,
    "parity.logs": 0,
    "parity.tiny_parts": 0,
    "parity.model_map": 0,
    "parity.aitk": 0,
    "parity.family": 0,
    "parity.families": 0,
    "parity.server": 0,
    "parity.zimage": 0,
    "parity.flux": 0,
    "parity.job": 1,
    "parity.plan": 2,
    "parity.render": 3,
    "parity.compare": 4,
    "parity.attribute": 5,
    "parity.correct": 6,
    "parity.results": 7,
    "parity.run_info": 7,
    "parity.report": 8,
    "parity.run": 9,
    "parity.fleet": 10,
    "parity.options": 11,
    "parity.cli": 12,
    "parity.pytest_plugin": 12,
    "parity.testing": 12,
}

#: The model families' folders: facts only, each its own.
FAMILIES = ("parity.zimage", "parity.flux")

#: What a family's facts may use besides their own folder: nothing of parity but these.
FAMILY_MAY_IMPORT = (
    "parity.aitk",
    "parity.errors",
    "parity.family",
    "parity.settings",
    "parity.stack",
    "parity.tiny_parts",
)


def _stage(module: str) -> str:
    """The longest RANKS key that ``module`` is or lies under."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in RANKS and (n > 1 or len(parts) == 1):
            return name
    raise AssertionError(f"{module}: not in any stage of RANKS; add it")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every parity module ``path`` imports, lazily inside functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "parity":
                found += [(node.lineno, f"parity.{a.name}") for a in node.names]
            elif node.module.startswith("parity."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("parity")]
    return found


def _violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(path)
        stage = _stage(here)
        for line, target in _imports(path):
            if target == "parity.__version__":
                continue
            other = _stage(target)
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if stage in FAMILIES and not target.startswith((*FAMILY_MAY_IMPORT, stage)):
                out.append(f"{where}: the family's facts import {target}")
            elif RANKS[other] > RANKS[stage]:
                out.append(f"{where}: {stage} imports the later stage {target}")
    return out


def test_no_stage_imports_a_later_one():
    assert _violations() == []


def test_every_module_belongs_to_a_stage():
    for path in PACKAGE.rglob("*.py"):
        _stage(_module_name(path))  # raises for a module no stage names


def test_no_import_cycles():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {
        name: {t for _, t in _imports(path) if t in modules and t != name}
        for name, path in modules.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_docs_name_every_option_of_the_one_table():
    """docs/commands.md names each command-line option and its environment variable,
    docs/pytest-plugin.md each plugin option and its ini name: both made from one table."""
    from parity.options import OPTIONS

    docs = PACKAGE.parent / "docs"
    commands = (docs / "commands.md").read_text(encoding="utf-8")
    plugin = (docs / "pytest-plugin.md").read_text(encoding="utf-8")
    for option in OPTIONS:
        if option.commands:
            assert f"`{option.flag}" in commands, option.flag
            if option.env_name:
                assert f"`{option.env_name}`" in commands, option.env_name
        if option.plugin:
            assert f"`{option.plugin_flag}" in plugin, option.plugin_flag
            assert f"`{option.ini_name}`" in plugin, option.ini_name


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    import re

    out = set()
    for line in markdown.splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            text = line.lstrip("#").strip().lower()
            text = re.sub(r"[^\w\- ]", "", text)
            out.add(text.replace(" ", "-"))
    return out


def test_every_link_of_the_readme_and_docs_resolves():
    """Relative links of README.md and docs/ name files that exist, and anchors that
    their headings make (outside code blocks)."""
    import re

    root = PACKAGE.parent
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(root)}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                if anchor not in _anchors(file.read_text(encoding="utf-8")):
                    broken.append(f"{page.relative_to(root)}: {target} (no such heading)")
    assert broken == []
