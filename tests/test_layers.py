"""The project's layers are one-way: no module imports a higher layer, and only `vdemo.world` itself uses its private
names.

Layers, low to high (a module may import its own layer and any lower one, never a higher one):

    0  base        vdemo (the package: __version__), vdemo.errors, vdemo.config
    1  data        vdemo.media, vdemo.strokes, vdemo.world, vdemo.export   (user media, strokes, the synthetic world,
                                                                           writing results)
    2  primitives  vdemo.attention, vdemo.samplers                         (attention processors and modes,
                                                                           schedulers: the models use them)
    3  models      vdemo.models
    4  pipeline    vdemo.pipeline, vdemo.cost                              (cost reads attention pairs and scheduler
                                                                           calls; the pipeline carries GpuCost)
    5  backends    vdemo.backends
    6  services    vdemo.compare, vdemo.long                               (jobs of many runs on the shared pipeline,
                                                                           for the UI and their own CLIs)
    7  ui          vdemo.ui
    8  tools       vdemo.train, vdemo.train_v2, vdemo.train_planner, vdemo.eval, vdemo.long_eval, vdemo.bench,
                vdemo.bench_app, vdemo.bakeoff, vdemo.__main__
                                                                           (may import anything)

attention and samplers sit below models (not beside the pipeline) because the models build on them at import time
(`vdemo.models.tiny_unet` installs `vdemo.attention`'s processors); cost sits with the pipeline because it imports
attention and samplers and the pipeline imports it. Every import counts: module level, inside functions, and under
`if TYPE_CHECKING:`. A new top-level module under vdemo/ must be given a layer here.

Outside `vdemo/world/`, nothing imports or reads a `_private` name of `vdemo.world` (or of its modules): what other
layers need is public and exported by `vdemo/world/__init__.py`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass

import pytest

import vdemo

LAYERS: dict[str, int] = {
    "": 0, "errors": 0, "config": 0,
    "media": 1, "strokes": 1, "world": 1, "export": 1,
    "attention": 2, "samplers": 2,
    "models": 3,
    "pipeline": 4, "cost": 4,
    "backends": 5,
    "compare": 6, "long": 6,
    "ui": 7,
    "train": 8, "train_v2": 8, "train_planner": 8, "eval": 8, "long_eval": 8, "bench": 8, "bench_app": 8,
    "bakeoff": 8, "__main__": 8,
}  # fmt: skip
LAYER_NAMES = ("base", "data", "primitives", "models", "pipeline", "backends", "services", "ui", "tools")
WORLD = "vdemo.world"


def all_modules() -> dict[str, bool]:
    """Every module under vdemo/ (name -> is a package), the package itself included."""
    def fail(name):
        raise ImportError(f"cannot import {name}")

    found = {"vdemo": True}
    for info in pkgutil.walk_packages(vdemo.__path__, "vdemo.", onerror=fail):
        found[info.name] = info.ispkg
    return found


MODULES = all_modules()


def top_level(module: str) -> str:
    """'vdemo.backends.hub.base' -> 'backends'; 'vdemo' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int:
    return LAYERS[top_level(module)]


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Import:
    target: str  # the vdemo module imported (or the module a name is imported from, when the name is no module)
    names: tuple[str, ...]  # names taken from it by `from target import ...` (empty for `import target`)
    line: int


def resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def imports_of(module: str, source: str, is_package: bool = False, modules=MODULES) -> list[Import]:
    """Every import of a vdemo module in `source`, wherever it is (module level, functions, TYPE_CHECKING)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == "vdemo"]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(module, is_package, node.level, node.module) if node.level else node.module
            if base.split(".")[0] != "vdemo":
                continue
            plain = []
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:  # `from vdemo import world`: the module vdemo.world
                    found.append(Import(f"{base}.{alias.name}", (), node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(base, tuple(plain), node.lineno))
    return found


def world_module_names(source: str, module: str, is_package: bool, modules=MODULES) -> set[str]:
    """Local names bound to vdemo.world or one of its modules (`from vdemo import world`, `import vdemo.world as w`,
    `from vdemo.world import scenes`), so that `world._x` is seen too."""
    bound = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and (alias.name == WORLD or alias.name.startswith(WORLD + ".")):
                    bound.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(module, is_package, node.level, node.module) if node.level else node.module
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules and (target == WORLD or target.startswith(WORLD + ".")):
                    bound.add(alias.asname or alias.name)
    return bound


def dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def violations(module: str, source: str, is_package: bool = False, modules=MODULES) -> list[str]:
    """One line per layering problem of `module` (its name under vdemo, its source)."""
    if top_level(module) not in LAYERS:
        return [f"{module}: top-level module {top_level(module)!r} has no layer in tests/test_layers.py"]
    own = layer_of(module)
    in_world = module == WORLD or module.startswith(WORLD + ".")
    problems = []
    for imp in imports_of(module, source, is_package, modules):
        where = f"{module}:{imp.line}"
        if top_level(imp.target) not in LAYERS:
            problems.append(f"{where}: imports {imp.target}, whose top-level module has no layer")
            continue
        theirs = layer_of(imp.target)
        if theirs > own:
            problems.append(f"{where}: {LAYER_NAMES[own]} layer ({module}) imports the higher {LAYER_NAMES[theirs]} "
                            f"layer ({imp.target})")
        targets_world = imp.target == WORLD or imp.target.startswith(WORLD + ".")
        if targets_world and not in_world:
            private = [n for n in imp.names if is_private(n)] + [p for p in imp.target.split(".") if is_private(p)]
            if private:
                problems.append(f"{where}: imports private {', '.join(private)} from {imp.target}")
    if not in_world:
        bound = world_module_names(source, module, is_package, modules)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                head = dotted(node.value)
                if head and (head in bound or head == WORLD or head.startswith(WORLD + ".")):
                    problems.append(f"{module}:{node.lineno}: reads private {head}.{node.attr}")
    return problems


def source_of(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------------------------------------------------ the rules
def test_every_top_level_module_has_a_layer():
    missing = sorted({top_level(m) for m in MODULES} - set(LAYERS))
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


def test_no_module_imports_a_higher_layer_or_a_private_world_name():
    problems = []
    for module, is_package in sorted(MODULES.items()):
        problems += violations(module, source_of(module), is_package)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


# ------------------------------------------------------------------------------------------------ the checker
def test_the_checker_reports_an_upward_import_anywhere_in_a_module():
    source = '''
import numpy as np

from vdemo.config import LIMITS
from vdemo.strokes import Stroke


def helper():
    from vdemo.backends.tiny import TinyBackend  # data layer -> backends: not allowed

    return TinyBackend
'''
    problems = violations("vdemo.world.fake", source)
    assert len(problems) == 1 and "vdemo.world.fake:9" in problems[0] and "vdemo.backends.tiny" in problems[0]
    assert violations("vdemo.ui.fake", source) == []  # the same imports from the top are fine


def test_the_checker_reports_upward_imports_in_every_form():
    assert violations("vdemo.models.fake", "from vdemo import pipeline\n")  # a module imported from its package
    assert violations("vdemo.models.fake", "import vdemo.ui.handlers\n")
    assert violations("vdemo.models.fake", "from ..ui import handlers\n")  # relative, from vdemo.models
    assert violations("vdemo.models.v2.fake", "from ...backends import tiny\n")
    assert violations("vdemo.cost", "if TYPE_CHECKING:\n    from vdemo.backends import Backend\n")
    assert violations("vdemo.pipeline", "from vdemo import __version__\nfrom .models.planner import Plan\n") == []
    assert violations("vdemo.newthing", "import os\n")  # a top-level module without a layer


def test_the_checker_reports_private_world_names_outside_the_world():
    assert violations("vdemo.models.fake", "from vdemo.world.scenes import _object_tracks\n")
    assert violations("vdemo.train", "from vdemo.world.grammar import VOCAB, _tokens\n")  # tools too
    assert violations("vdemo.eval", "from vdemo import world\n\nx = world._SPEC_FNS\n")
    assert violations("vdemo.eval", "from vdemo.world import scenes as s\n\nx = s._bezier\n")
    assert violations("vdemo.eval", "import vdemo.world.scenes\n\nx = vdemo.world.scenes._bezier\n")
    assert violations("vdemo.world.fake", "from .scenes import _bezier\n") == []  # inside the world: fine
    assert violations("vdemo.models.fake", "from vdemo.world import tokenize\nx = tokenize.__name__\n") == []
