"""The dependency and determinism rules of the layout, checked by tools and by AST walks.

(a) ruff's banned-api rule (TID251) is really active in the nested `ruff.toml` of actors/,
    transport/ and sim/: a probe file with a forbidden import is flagged.
(b) No `set`/`frozenset` is iterated where the order could leak into behaviour, as far as a
    per-module AST walk can tell (see `set_iterations` for exactly what it catches).
(c) `import actors` (and transport, sim, peerpxe) loads this repository's folder, never a
    same-named package installed from PyPI.
(d) actors/ never imports a host or the application; transport/ and sim/ never import each
    other; by an AST scan of every import, independent of ruff.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("actors", "transport", "sim", "peerpxe")
BEHAVIOUR_PACKAGES = ("actors", "sim")
"""Where iteration order becomes behaviour, so a set's hash order would break determinism."""

FORBIDDEN_IMPORTS: dict[str, frozenset[str]] = {
    "actors": frozenset({"transport", "sim", "peerpxe", "pykka", "simpy", "zeroconf"}),
    "transport": frozenset({"sim", "simpy", "peerpxe"}),
    "sim": frozenset({"transport", "pykka", "zeroconf", "peerpxe"}),
}
"""Top-level modules each package must not import (DESIGN.md §2: dependencies point one way)."""


def python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


# --------------------------------------------------------------------------- (a) ruff TID251


def ruff_command() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[lint]')")
    return [found]


def ruff_findings(package: str, source: str) -> tuple[int, list[str]]:
    """Run `ruff check` on a probe file inside `package`; return its exit code and lines."""
    probe = REPO / package / f"_purity_probe_{secrets.token_hex(6)}.py"
    try:
        probe.write_text(source)
        result = subprocess.run(
            [*ruff_command(), "check", "--no-cache", "--output-format", "concise", str(probe)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        probe.unlink(missing_ok=True)
    return result.returncode, result.stdout.splitlines()


@pytest.mark.parametrize(
    ("package", "source", "banned"),
    [
        ("actors", "import socket\nimport time\n", ["socket", "time"]),
        (
            "actors",
            "import random\nfrom threading import Thread\n\nrandom.random()\n",
            ["threading", "random.random"],
        ),
        (
            "actors",
            "import sim\nimport transport\nfrom peerpxe import cli\n",
            ["sim", "transport", "peerpxe"],
        ),
        ("transport", "import sim\nimport simpy\n", ["sim", "simpy"]),
        ("sim", "import pykka\nimport transport\n", ["pykka", "transport"]),
    ],
    ids=["actors-io", "actors-thread-rng", "actors-hosts", "transport-sim", "sim-transport"],
)
def test_ruff_bans_forbidden_imports(package: str, source: str, banned: list[str]) -> None:
    """A forbidden import or call in a package makes `ruff check` fail with TID251 for each."""
    returncode, lines = ruff_findings(package, source)
    flagged = [line for line in lines if " TID251 " in line]
    assert returncode != 0, lines
    assert len(flagged) == len(banned), lines
    for name in banned:
        assert any(f"`{name}` is banned" in line for line in flagged), (name, lines)


def test_ruff_allows_the_sanctioned_imports_in_actors() -> None:
    """The ban is not so broad that actors/ cannot use msgpack, hmac or an injected Random."""
    source = '"""Probe."""\n\nimport hmac\nfrom random import Random\n\nimport msgpack\n\n'
    source += "RNG = Random(1)\nPACK = (msgpack.packb, hmac.digest)\n"
    returncode, lines = ruff_findings("actors", source)
    assert not [line for line in lines if " TID251 " in line], lines
    assert returncode == 0, lines


# --------------------------------------------------------------------------- (b) set iteration

SET_TYPE_NAMES = frozenset({"set", "frozenset", "Set", "FrozenSet", "AbstractSet", "MutableSet"})
SET_METHODS = frozenset({"union", "intersection", "difference", "symmetric_difference", "copy"})
ORDERED_CONSUMERS = frozenset({"list", "tuple", "iter", "enumerate", "zip", "next", "reversed"})
ORDER_FREE_REDUCERS = frozenset({"sorted", "set", "frozenset", "all", "any", "len", "min", "max"})
"""Consumers whose result does not depend on iteration order (`sum` is not: float sums)."""
PRAGMA = "# set-order-independent"


def _is_set_annotation(node: ast.expr | None) -> bool:
    if node is None:
        return False
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _is_set_annotation(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return False
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_set_annotation(node.left) or _is_set_annotation(node.right)
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id in SET_TYPE_NAMES
    return isinstance(node, ast.Attribute) and node.attr in SET_TYPE_NAMES


def _called_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name):
            return node.func.id
        if isinstance(node.func, ast.Attribute):
            return node.func.attr
    return None


@dataclass
class _SetNames:
    """What one module declares to be a set: variables, attributes, set-returning functions."""

    names: set[str]
    attributes: set[str]
    functions: set[str]

    def is_set(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Set | ast.SetComp):
            return True
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, ast.Attribute):
            return node.attr in self.attributes
        if isinstance(node, ast.BinOp) and isinstance(
            node.op, ast.BitOr | ast.BitAnd | ast.Sub | ast.BitXor
        ):
            return self.is_set(node.left) or self.is_set(node.right)
        called = _called_name(node)
        if called in ("set", "frozenset") and isinstance(node, ast.Call):
            return isinstance(node.func, ast.Name)
        if called in SET_METHODS and isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Attribute)
            return self.is_set(node.func.value)
        return called is not None and called in self.functions


def _declared_sets(tree: ast.Module) -> _SetNames:
    declared = _SetNames(names=set(), attributes=set(), functions=set())
    class_bodies = {
        id(statement)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for statement in node.body
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and _is_set_annotation(node.annotation):
            if isinstance(node.target, ast.Attribute) or id(node) in class_bodies:
                declared.attributes.add(ast.unparse(node.target).rsplit(".", 1)[-1])
            else:
                declared.names.add(ast.unparse(node.target))
        elif isinstance(node, ast.arg) and _is_set_annotation(node.annotation):
            declared.names.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _is_set_annotation(
            node.returns
        ):
            declared.functions.add(node.name)
    # Plain assignments of an obvious set (`seen = set()`), after the annotations are known.
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and declared.is_set(node.value):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    declared.names.add(target.id)
                elif isinstance(target, ast.Attribute):
                    declared.attributes.add(target.attr)
    return declared


def _order_free_generators(tree: ast.Module) -> set[int]:
    """ids of generator expressions passed straight to an order-independent reducer."""
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (_called_name(node) or "") in ORDER_FREE_REDUCERS:
            exempt.update(id(arg) for arg in node.args if isinstance(arg, ast.GeneratorExp))
    return exempt


def set_iterations(source: str, filename: str = "<probe>") -> list[str]:
    """Places in one module where a set is iterated in an order-revealing way.

    Catches iteration (for loops; list, dict and generator comprehensions; `list()`, `tuple()`,
    `iter()`, `enumerate()`, `zip()`, `next()`, `str.join()`, `*` unpacking) over expressions
    that are visibly sets in this module: set literals and comprehensions, `set()` and
    `frozenset()` calls, set algebra (`a | b` with a set operand), `.union()` and friends, and
    names, attributes and functions annotated (or plainly assigned) as a set in this module,
    matched by name only. It does not follow types across modules or through untyped helpers,
    so it is a net for the obvious cases, not a proof. Exempt: set comprehensions (the result
    is a set again), generators fed straight to sorted/set/frozenset/all/any/len/min/max, and
    lines ending in `# set-order-independent` for an order that truly cannot matter.
    """
    tree = ast.parse(source, filename=filename)
    lines = source.splitlines()
    declared = _declared_sets(tree)
    exempt = _order_free_generators(tree)
    findings: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        for iterated, how in _iterations(node, exempt):
            if declared.is_set(iterated):
                findings.append((iterated.lineno, f"{how} over `{ast.unparse(iterated)}`"))
    return [
        f"{filename}:{line}: {what}"
        for line, what in sorted(findings)
        if not lines[line - 1].rstrip().endswith(PRAGMA)
    ]


def _iterations(node: ast.AST, exempt: set[int]) -> list[tuple[ast.expr, str]]:
    """The expressions `node` iterates in order, with a word on how."""
    if isinstance(node, ast.For | ast.AsyncFor):
        return [(node.iter, "for loop")]
    if isinstance(node, ast.ListComp | ast.DictComp | ast.GeneratorExp) and id(node) not in exempt:
        return [(generator.iter, "comprehension") for generator in node.generators]
    if isinstance(node, ast.Starred):
        return [(node.value, "unpacking")]
    called = _called_name(node)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and called:
        return [(arg, f"{called}()") for arg in node.args] if called in ORDERED_CONSUMERS else []
    if isinstance(node, ast.Call) and called == "join":
        return [(arg, "join()") for arg in node.args]
    return []


@pytest.mark.parametrize(
    "source",
    [
        "for x in {1, 2}:\n    pass\n",
        "for x in set(items):\n    pass\n",
        "ys = [x for x in frozenset(items)]\n",
        "d = {x: 1 for x in {a, b}}\n",
        "peers: set[str] = set()\nfor p in peers:\n    pass\n",
        "def f(peers: frozenset[str]) -> None:\n    return list(peers)\n",
        "class A:\n    peers: set[str]\n    def f(self) -> None:\n        for p in self.peers:\n"
        "            pass\n",
        "class A:\n    def __init__(self) -> None:\n        self.peers: set[str] = set()\n"
        "    def f(self) -> str:\n        return ','.join(self.peers)\n",
        "seen = set()\nfirst = next(iter(seen))\n",
        "def live() -> set[str]:\n    return set()\nfor p in live():\n    pass\n",
        "a: set[int] = set()\nfor x in a | b:\n    pass\n",
        "a: set[int] = set()\nfor x in a.union(b):\n    pass\n",
        "a: set[int] | None = None\nprint(*a)\n",
        "total = sum(x for x in {1.0, 2.0})\n",
        "import typing\nS: typing.AbstractSet[int] = frozenset()\nfor x in S:\n    pass\n",
    ],
)
def test_set_iteration_checker_flags(source: str) -> None:
    """The checker catches each of these (so an empty result over the tree means something)."""
    assert set_iterations(source), source


@pytest.mark.parametrize(
    "source",
    [
        "for x in sorted({1, 2}):\n    pass\n",
        "peers: set[str] = set()\nfor p in sorted(peers):\n    pass\n",
        "peers: dict[str, None] = {}\nfor p in peers:\n    pass\n",
        "peers: set[str] = set()\nok = all(p for p in peers)\nn = len(peers)\n",
        "peers: set[str] = set()\nmore = {p + 'x' for p in peers}\n",
        "peers: set[str] = set()\nif 'a' in peers:\n    pass\n",
        "peers: set[str] = set()\nfor p in peers:  # set-order-independent\n    pass\n",
        "items = [1, 2]\nfor x in items:\n    pass\n",
    ],
)
def test_set_iteration_checker_allows(source: str) -> None:
    """Sorted iteration, dicts, order-free reducers, membership and the pragma pass."""
    assert set_iterations(source) == [], source


def test_no_set_iteration_on_behaviour_paths() -> None:
    """actors/ and sim/ never iterate a set in an order-revealing way (see `set_iterations`)."""
    files = [path for package in BEHAVIOUR_PACKAGES for path in python_files(package)]
    assert any(path.name == "codec.py" for path in files)
    findings = [
        finding
        for path in files
        for finding in set_iterations(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert not findings, (
        "set iteration order depends on PYTHONHASHSEED; use sorted(...) or a dict, or end the "
        f"line with `{PRAGMA}` if the order cannot matter:\n" + "\n".join(findings)
    )


# --------------------------------------------------------------------------- (c) module paths


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_load_from_this_repository(package: str) -> None:
    """`import actors` is this repo's actors/, not an unrelated package of the same name."""
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == REPO / package


# --------------------------------------------------------------------------- (d) imports


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """Absolute names of every module imported by `module` (relative imports resolved).

    Also catches `importlib.import_module("x")` and `__import__("x")` with a literal name.
    """
    package_parts = module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package_parts[: len(package_parts) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            if name:
                found.append((node.lineno, name))
            found.extend(
                (node.lineno, ".".join(filter(None, [name, alias.name]))) for alias in node.names
            )
        elif isinstance(node, ast.Call) and (_called_name(node) or "") in (
            "import_module",
            "__import__",
        ):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts)


def test_imported_modules_resolves_every_import_form() -> None:
    """The scanner sees plain, from, relative and dynamic imports."""
    source = (
        "import os.path\nfrom sim import net\nfrom .. import transport\nfrom ..peerpxe import x\n"
        "import importlib\nimportlib.import_module('zeroconf')\n__import__('simpy')\n"
    )
    roots = {name.split(".")[0] for _, name in imported_modules(source, "actors.sub.mod")}
    assert roots >= {"os", "sim", "actors", "zeroconf", "simpy"}
    names = {name for _, name in imported_modules(source, "actors.sub.mod")}
    assert {"actors.transport", "actors.peerpxe.x"} <= names


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_dependencies_point_one_way(package: str) -> None:
    """No module of `package` imports what DESIGN.md §2 forbids it (AST scan, beside ruff)."""
    forbidden = FORBIDDEN_IMPORTS[package]
    violations = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in python_files(package)
        for line, name in imported_modules(path.read_text(), module_name(path))
        if name.split(".")[0] in forbidden
    ]
    assert not violations, "\n".join(violations)
