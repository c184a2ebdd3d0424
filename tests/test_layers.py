"""The package's import graph runs one way: commands stand above the library, and no part imports one above it."""
import ast
import pathlib

import latentae

ROOT = pathlib.Path(latentae.__file__).parent
# Lowest first; a part may import its own modules and those of parts listed before it (never after).
LAYERS = [
    ["errors"], ["config", "options", "threads", "precision", "distributed"], ["runtime", "weights", "ldm"],
    ["quantizers"], ["models", "data"], ["losses"], ["exporting"], ["loading"], ["latents"], ["evaluation"],
    ["inspection"], ["probe", "trainer", "demo"], ["commands"], ["cli"],
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str:
    return module.split(".")[1]


def _imports(path: pathlib.Path):
    """(imported latentae module, line) for every import in the file, function-local ones included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.startswith("latentae."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "latentae":  # from latentae import ldm: the names are the parts
                yield from ((f"latentae.{a.name}", node.lineno) for a in node.names if a.name != "__version__")
            elif node.module.startswith("latentae."):
                yield node.module, node.lineno


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts == ("__init__.py",):
            continue
        yield rel.parts[0].removesuffix(".py"), path


def test_every_part_has_a_layer():
    parts = {part for part, _ in _modules()}
    assert parts - RANK.keys() == set(), "a new part of the package needs its place in LAYERS"


def test_no_import_runs_back_up():
    upward = []
    for part, path in _modules():
        for module, line in _imports(path):
            target = _part(module)
            if target != part and RANK.get(target, -1) >= RANK[part]:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} ({part}) imports {module}")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The walk finds function-local and `from latentae import` imports (the forms an upward import hides in)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from latentae.commands import train\n    from latentae import cli\n")
    assert [m for m, _ in _imports(src)] == ["latentae.commands", "latentae.cli"]
