"""The package's shape stays as docs/ARCHITECTURE.md draws it: imports only go down a floor (so there is
no import circle), and no function is over 60 lines or takes over 8 parameters."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "bidsapp"
MAX_LINES, MAX_PARAMS = 60, 8
# Floors, lowest first (docs/ARCHITECTURE.md): a module imports only from its own floor or below, at
# module level or inside a function alike. Matched by the longest prefix; unlisted modules are only
# checked for circles.
FLOORS = {
    "bidsapp": 0, "bidsapp.errors": 0, "bidsapp.orientation": 0, "bidsapp.tasks": 0, "bidsapp.argtypes": 0,
    "bidsapp.pool": 0,
    "bidsapp.imaging": 1, "bidsapp.metrics": 1, "bidsapp.derivatives": 1, "bidsapp.settings": 1,
    "bidsapp.validation": 1, "bidsapp.engine": 1, "bidsapp.models": 1, "bidsapp.memory": 1,
    "bidsapp.legacy": 2, "bidsapp.plan": 2, "bidsapp.qc": 2, "bidsapp.analysis": 2, "bidsapp.guards": 2,
    "bidsapp.postprocess": 2, "bidsapp.boxes": 2, "bidsapp.corrections": 2,
    "bidsapp.pipelines": 3, "bidsapp.figures": 3, "bidsapp.group": 3, "bidsapp.analyze": 3,
    "bidsapp.vertlevels": 3,
    "bidsapp.runner": 4, "bidsapp.segment": 4,
    "bidsapp.cli": 5,
    "bidsapp.brainlife": 6, "bidsapp.demo": 6,
}
# outside the files of the refactor that added this test (issue 14); listed so that they are not
# forgotten: the test fails as soon as one of them is fixed, so that the entry is removed
PENDING: set[str] = set()


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imports(name: str) -> set[str]:
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            for alias in node.names:  # "from . import x" imports the module x when there is one
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _floor(name: str) -> int | None:
    keys = [k for k in FLOORS if name == k or (k != "bidsapp" and name.startswith(k + "."))]
    return FLOORS[max(keys, key=len)] if keys else None


def test_no_import_circle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_imports_only_go_down():
    upward = [(a, b) for a, deps in GRAPH.items() for b in deps
              if _floor(a) is not None and _floor(b) is not None and _floor(b) > _floor(a)]
    assert not upward, f"imports running back up a floor: {upward}"
    assert _floor("bidsapp.runner") > _floor("bidsapp.pipelines") > _floor("bidsapp.legacy")


def _functions():
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                params = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
                          if a.arg not in ("self", "cls")]
                params += ["*args"] * bool(args.vararg) + ["**kwargs"] * bool(args.kwarg)
                yield f"{name}.{node.name}", node.end_lineno - node.lineno + 1, len(params)


def test_functions_are_short_and_take_few_parameters():
    too_big = {f"{qual} ({lines} lines, {params} parameters)" for qual, lines, params in _functions()
               if (lines > MAX_LINES or params > MAX_PARAMS) and qual not in PENDING}
    assert not too_big
    still = {qual for qual, lines, params in _functions() if lines > MAX_LINES or params > MAX_PARAMS}
    assert still == PENDING, f"fixed: remove from PENDING {PENDING - still}"


def test_the_checks_see_the_package():
    # a check that finds nothing must fail: the graph holds the known edges
    assert "bidsapp.tasks" in GRAPH["bidsapp.pipelines"] and "bidsapp.pipelines" in GRAPH["bidsapp.runner"]
    assert any(lines > 20 for _, lines, _ in _functions())


# what a requirement is imported as, when not its own name; and the ones used without an import
IMPORT_NAMES = {"dynamic-network-architectures": "dynamic_network_architectures", "pybids": "bids",
                "pillow": "PIL", "bids-validator-deno": None, "bids-validator": None}
NOT_IMPORTED = {"bids-validator-deno": "an executable (validation.py runs it)",
                "bids-validator": "pybids' own dependency, pinned for reproducible installs"}


def test_every_runtime_requirement_is_used():
    lines = (ROOT.parent / "requirements.txt").read_text().splitlines()
    pinned = [line.split("==")[0].strip() for line in lines if "==" in line and not line.startswith("#")]
    imported = {alias.name.split(".")[0] for tree in TREES.values() for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for tree in TREES.values() for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    unused = [req for req in pinned if req not in NOT_IMPORTED
              and IMPORT_NAMES.get(req, req.replace("-", "_")) not in imported]
    assert not unused, f"pinned but imported nowhere in bidsapp/: {unused}"
    assert "monai" not in imported and "nnunetv2" not in imported  # the engine is ours; nnunetv2 is test-only
    assert (ROOT / "validation.py").read_text().count("bids-validator-deno") > 0
