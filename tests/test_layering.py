"""No import cycle, no import against the data flow.

Two checks: every module imports alone, in a process where no other module of the package was imported
(nothing depends on import order), and every import statement of the package, module-level or inside
a function (the lazy imports that keep `mfk210 --help` fast count too), goes to a module of the same
layer or a lower one, with no cycle among modules of one layer.
"""
import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import mobilefacenet_k210

PACKAGE = "mobilefacenet_k210"
ROOT = Path(mobilefacenet_k210.__file__).parent
# Lowest first. A module may import modules of its own layer or of layers listed before it.
LAYERS = [
    ["errors"], ["atomic", "fileinfo", "folder_lock", "wheels", "npm", "preprocessing", "k210"], ["config"],
    ["model", "data"], ["runtime"], ["evaluate", "export", "teacher", "pretrained"], ["training"], ["board"],
    ["demo", "bench"],  # the bench measures the demo, the demo's report holds its figures to bench.targets
    ["cli"], ["__main__"],
]
NOT_PYTHON3 = {f"{PACKAGE}.board.canmv_face_id"}  # MicroPython: runs on the board, never imported here


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> Dict[str, Path]:
    return {_name(p): p for p in sorted(ROOT.rglob("*.py")) if _name(p) not in NOT_PYTHON3}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not in LAYERS of {__file__}; add it where it belongs in the data flow")


def _imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The package's modules that ``path`` imports anywhere (module-level or in a function)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != PACKAGE:
                out.add(target)
    return out


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle of ``graph`` as a path, or []."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_no_import_cycle_and_no_import_against_the_data_flow():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    upward = [f"{a} -> {b}" for a, deps in graph.items() for b in sorted(deps)
              if not a.startswith(b + ".") and _layer(b) > _layer(a)]
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)
    # a package's __init__ re-exporting its own submodules is not a cycle
    strict = {a: {b for b in deps if not (a.startswith(b + ".") and modules[b].name == "__init__.py")}
              for a, deps in graph.items()}
    assert not _cycle(strict), "import cycle: " + " -> ".join(_cycle(strict))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


# One interpreter loads the third-party packages the package's modules import at module level (numpy,
# TensorFlow: seconds each), then forks a fresh child per module: each child imports its module into a
# process where no module of the package was imported before, so nothing depends on import order,
# without paying TensorFlow's import ~90 times.
PROBE = r"""
import importlib, json, os, sys
names, preload = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in preload:
    importlib.import_module(name)
assert not [m for m in sys.modules if m.split(".")[0] in {n.split(".")[0] for n in names}], "package preloaded"
failures = {}
for name in names:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
        except BaseException as exc:
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
            os._exit(1)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status:
        failures[name] = message or f"child died with status {status}"
print(json.dumps(failures))
"""


def _third_party(paths) -> List[str]:
    """Top-level packages, neither stdlib nor ours, that the files import at module level."""
    tops = set()
    for path in paths:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops.add(node.module.split(".")[0])
    return sorted(tops - set(sys.stdlib_module_names) - {PACKAGE, "__future__"})


def _imports_alone(names: List[str], preload: List[str], cwd: Path) -> Dict[str, str]:
    """Each of ``names`` imported in its own forked child of one interpreter that loaded only ``preload``."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(names), json.dumps(preload)], cwd=cwd,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_module_imports_alone():
    modules = {n: p for n, p in _modules().items() if n != f"{PACKAGE}.__main__"}  # __main__ runs the CLI
    preload = [name for name in _third_party(modules.values()) if importlib.util.find_spec(name)]
    assert "tensorflow" in preload and len(modules) > 50
    failures = _imports_alone(sorted(modules), preload, ROOT.parent)
    assert not failures, "modules that do not import alone:\n" + "\n".join(f"{k}: {v}" for k, v in failures.items())


def test_the_import_check_finds_a_module_that_needs_another_imported_first(tmp_path):
    pkg = tmp_path / "orderpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "first.py").write_text("import orderpkg\norderpkg.SHARED = 1\n")
    (pkg / "second.py").write_text("import orderpkg\nVALUE = orderpkg.SHARED + 1\n")
    subprocess.run([sys.executable, "-c", "import orderpkg.first, orderpkg.second"], cwd=tmp_path, check=True)
    failures = _imports_alone(["orderpkg", "orderpkg.first", "orderpkg.second"], ["numpy"], tmp_path)
    assert list(failures) == ["orderpkg.second"] and "SHARED" in failures["orderpkg.second"], failures
