"""The package reads as the data flow: each stage imports only itself and the stages
before it, the model families' facts import no stage at all, and no stage names a
family: the stages ask the registry (:mod:`parity.families`)."""

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
    "parity.pipeline_parts": 0,
    "parity.model_map": 0,
    "parity.aitk": 0,
    "parity.family": 0,
    "parity.families": 0,
    "parity.server": 0,
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


def _family_folders() -> dict[str, tuple[str, ...]]:
    """The families each folder holds (a folder is the package of its pipeline adapter)."""
    from parity.families import FAMILIES

    folders: dict[str, tuple[str, ...]] = {}
    for name, f in FAMILIES.items():
        folder = f.pipeline.__name__.rpartition(".")[0]
        folders[folder] = (*folders.get(folder, ()), name)
    return folders


#: The model families' folders, from the registry: facts only, rank 0. A folder may hold
#: several families that share their facts (Wan 2.1 and Wan 2.2 14B).
FAMILIES: dict[str, tuple[str, ...]] = _family_folders()
RANKS.update(dict.fromkeys(FAMILIES, 0))

#: Modules that are neither stages nor facts: test support, which builds each family's
#: tiny checkpoints.
NOT_STAGES = ("parity.testing",)

#: What a family's facts may use besides their own folder: nothing of parity but these.
FAMILY_MAY_IMPORT = (
    "parity.aitk",
    "parity.errors",
    "parity.family",
    "parity.settings",
    "parity.pipeline_parts",
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


def _family_names() -> set[str]:
    """The words that name a family in code: family names and server model ids."""
    from parity.families import FAMILIES, SERVER_MODELS

    return set(FAMILIES) | set(SERVER_MODELS)


def family_naming(source: str, where: str) -> list[str]:
    """Where a stage module's ``source`` names a family: an import of a family folder, or
    a string that is a family's name or server model id (``family.name == "zimage"``,
    ``FAMILIES["flux"]``). Prose in docstrings and messages is longer than one word and
    is not counted."""
    tree = ast.parse(source)
    names = _family_names()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            targets = []
        for target in targets:
            if any(target == f or target.startswith(f + ".") for f in FAMILIES):
                out.append(f"{where}:{node.lineno}: imports the family folder {target}")
                break
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in names:
                out.append(f"{where}:{node.lineno}: names the family {node.value!r}")
    return out


def _stage_modules() -> list[Path]:
    """Every module of a stage (rank 1 and above), front doors included."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if RANKS[_stage(name)] >= 1 and not name.startswith(NOT_STAGES):
            out.append(path)
    return out


def test_no_stage_names_a_family():
    found = []
    for path in _stage_modules():
        where = str(path.relative_to(PACKAGE.parent))
        found += family_naming(path.read_text(encoding="utf-8"), where)
    assert found == []


def test_a_stage_that_names_a_family_fails_the_layout():
    """The check above would catch the ways a stage used to lean on one family."""
    folder = next(iter(FAMILIES))
    name = FAMILIES[folder][0]
    leaks = {
        "import": f"from {folder}.aitk import preview_qtypes\n",
        "lazy import": f"def f():\n    import {folder}.server\n",
        "branch": f"def f(family):\n    return family.name == {name!r}\n",
        "lookup": f"from parity.families import FAMILIES\nx = FAMILIES[{name!r}]\n",
    }
    for what, source in leaks.items():
        assert family_naming(source, "stage.py"), what
    assert family_naming('"""Renders a Z-Image or FLUX.1 checkpoint."""\n', "stage.py") == []


def test_every_registered_family_is_a_folder_of_facts():
    from parity.families import FAMILIES as REGISTRY

    assert sorted(name for names in FAMILIES.values() for name in names) == sorted(REGISTRY)
    for folder in FAMILIES:
        assert (PACKAGE.parent / folder.replace(".", "/") / "family.py").is_file(), folder


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
