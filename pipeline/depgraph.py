"""What each ``dvc.yaml`` stage should declare, computed from the code: ``python pipeline/depgraph.py [--check]``.

Prints, per stage, the project ``.py`` files the stage's process imports (its ``deps``) and the ``params.yaml``
keys it reads (its ``params``), next to what ``dvc.yaml`` declares: what to add and what is stale.
``--check`` exits 1 when a dep or a param is missing (``tests/test_dvc_yaml.py`` runs the same checks);
``--why STAGE FILE`` shows how a stage comes to load a file; ``--write`` updates dvc.yaml to what it finds.
Pure ``ast`` + ``yaml`` (no torch, no Ray), with one exception: the command-line parser, below.

How a stage is found. Its ``cmd`` is ``python <script> <name> [args]``. The script's dispatch table (a
module-level dict keyed by stage name, ``STAGES`` in ``pipeline/stages.py``) maps the name either to a function
(the entry) or to an argv passed to a command-line ``main`` (``dirl.cli.main``). For an argv, a child process
imports the CLI module and runs ``main(argv)`` up to its ``parse_args``, stopped there: argparse itself says which
handler ``args.func`` is (nested subparsers, parsers built in loops) and what the parsed values are; no command
runs. The driver's branches on those values (``args.action == "show"``, ``getattr(stages, args.action)``) are
folded. The other entries of a dispatch table are not followed: they run in other stages.

Python deps (the import closure). Function-level reachability over the project's code (``dirl/`` and
``pipeline/``), starting at the script's module code and the stage's entry function:

* a *loaded* module is every module imported at module level by a loaded module (transitively, with its parent
  packages' ``__init__.py``), or imported inside a reachable function (the code imports lazily a lot);
  ``from pkg import name`` loads ``pkg/name.py`` when ``name`` is a submodule;
* a reachable function is one *referenced* (called or passed on: callbacks count) by reachable code or by the
  module-level code of a loaded module; a referenced class makes all its methods reachable; a module-level
  function or class decorated by a *project* function (a registry) is reachable once its module is loaded;
* not followed: annotations, ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` blocks of imported modules.

The stage's deps are the files of its loaded modules. A file of the closure that no dep covers (a dep may be
the file or a folder above it) is *missing*: DVC would not re-run the stage when it changes. The reverse is
*stale*: a declared ``.py`` file (or a code folder) none of whose files the stage loads, or that does not exist.
Missing is a fact (the file is imported); stale is evidence (a dynamic use can hide from a static scan).
Not seen by imports, so printed as notes: code that reads the code tree as data through a project ``__file__``
(a package copied into a model, a hash of the sources), and folder deps that also cover files the stage never
loads (a change there re-runs it for nothing).

Driver modules are not exempt: ``pipeline/stages.py``, ``dirl/cli.py`` and what they load run in every stage's
process (they parse the argv, load and validate params.yaml, print the result), so a change there can change or
break the stage. A module that the driver loads only for display would be listed too; this code has none.

Params (what the stage reads). In the reachable code, attribute chains on a config object: a name ``cfg`` or
``config``, a parameter annotated ``Config`` or the result of ``load_config``/``config_from_dict``/... (or of a
project function annotated to return ``Config``):

* ``cfg.train.lr`` reads ``train.lr`` (deeper chains count at that key: ``cfg.data.iharmony4.split`` reads
  ``data.iharmony4``); ``t = cfg.train; t.lr`` and parameters annotated ``TrainConfig`` ... read the same way;
* ``cfg.train`` passed on, returned, compared, ``asdict``-ed or ``getattr``-ed with a computed name reads the
  whole section;
* ``d = cfg.to_dict(); d["tune"]["max_steps_per_epoch"]`` reads ``tune.max_steps_per_epoch``, ``d["tune"]`` the
  section (writes into ``d`` are not reads);
* not reads: a value used only in an error or console message (``raise``, an ``assert``'s message, ``print``,
  ``logger.info``, ``warnings.warn``): it changes no output;
  the whole config serialised (``cfg.to_dict()``, ``save_resolved(cfg)``, logging all params): that
  is provenance, or shipping the config to a worker that rebuilds it, whose reads are in the closure and counted;
  the cross-section validation in ``Config.__post_init__`` (it refuses a file, it does not change a result).
  ``getattr(cfg, <computed>)`` is listed as a note.

Machine sections (``dirl.config.MACHINE_SECTIONS``, default ``("cluster", "mlflow")``: where a stage runs and
records, not what it learns) are exempt both ways: a stage need not declare them, and declaring them is not an
error (it is printed as a note), so that changing the tracking URI or the Ray address never re-runs a stage.
Params of another file (``results/tune/best.yaml: [train.lr]``) are values of an upstream output, not keys of
params.yaml: they are kept as declared and not compared.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("dirl", "pipeline")            # the project's code: files here are deps when a stage loads them
CONFIG_MODULE = "dirl/config.py"            # Config, its section classes and MACHINE_SECTIONS, read with ast
PARAMS_FILE = "params.yaml"
DEFAULT_MACHINE_SECTIONS = ("cluster", "mlflow")
CONFIG_NAMES = {"cfg", "config"}             # names (and attributes: self.cfg) that hold a Config
CONFIG_FACTORIES = {"load_config", "config_from_dict", "load_cfg", "trial_config", "resolve_tuned"}
DICT_WRITES = {"update", "setdefault", "pop", "popitem", "clear", "__setitem__"}
WHOLE = "*"                                  # a section read (or declared) as a whole


class EntryError(RuntimeError):
    """A stage whose entry function cannot be found from its ``cmd``."""


# ----------------------------------------------------------------------------- results


@dataclass
class StageAnalysis:
    stage: str
    entry: str                                    # "dirl.cli:cmd_data (argv data ingest)"
    files: set[str] = field(default_factory=set)  # loaded project files, relative posix paths
    reads: dict[str, set[str]] = field(default_factory=dict)  # section -> keys read ("*" = whole)
    where: dict[str, set[str]] = field(default_factory=dict)  # "train.lr" -> {"dirl/train/loop.py:50", ...}
    notes: list[str] = field(default_factory=list)
    came_from: dict[tuple, tuple | None] = field(default_factory=dict)  # unit -> the unit that reached it
    file_uses: set[str] = field(default_factory=set)  # "path:line" of reachable code using a project __file__

    def why(self, path: str) -> list[str]:
        """How the stage comes to load ``path``, one step a line, from the file back to the stage's entry."""
        unit = next((u for u in self.came_from if u[0] == "top" and _module_path_matches(u[1], path)), None)
        if unit is None:
            return [f"{path}: not loaded by stage {self.stage}"]
        out, seen = [path], set()
        while unit is not None and unit[0] in ("top", "def") and unit not in seen:
            seen.add(unit)
            prev = self.came_from.get(unit)
            out.append(f"  imported by {_unit_name(prev)}" if unit[0] == "top"
                       else f"  {_unit_name(unit)} is used by {_unit_name(prev)}")
            unit = prev
        return out

    def read_keys(self) -> list[str]:
        """``["data.workers", "synth", ...]``: whole sections by name, other reads as dotted keys."""
        out = []
        for s in sorted(self.reads):
            keys = self.reads[s]
            out += [s] if WHOLE in keys else [f"{s}.{k}" for k in sorted(keys)]
        return out


def _unit_name(unit: tuple | None) -> str:
    if unit is None or unit[0] == "script":
        return "the stage script"
    if unit[0] == "entry":
        return "the stage's dispatch (its entry)"
    return f"{unit[1]} (module code)" if unit[0] == "top" else f"{unit[1]}:{unit[2]}"


def _module_path_matches(name: str, path: str) -> bool:
    stem = path[:-3] if path.endswith(".py") else path
    stem = stem[:-len("/__init__")] if stem.endswith("/__init__") else stem
    return stem.replace("/", ".") == name


@dataclass
class Module:
    name: str
    path: str                       # relative posix path
    tree: ast.Module
    is_package: bool
    defs: dict[str, ast.AST]        # module-level def / class by name
    bindings: dict[str, tuple]      # module-level import bindings: name -> ("mod", m) | ("sym", m, attr)


# ----------------------------------------------------------------------------- small ast helpers


def _const_str(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _chain(node) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; ``getattr(a.b, "c")`` -> ["a", "b", "c"]; else None."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        base = _chain(node.value)
        return None if base is None else base + [node.attr]
    if _is_getattr(node) and len(node.args) >= 2 and _const_str(node.args[1]) is not None:
        base = _chain(node.args[0])
        return None if base is None else base + [node.args[1].value]
    return None


def _is_getattr(node) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
        and len(node.args) >= 2


def _callee_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


_SKIP_FIELDS = {"ctx", "op", "ops", "type_comment"}


def _children(node) -> Iterator[tuple[str, ast.AST]]:
    for name in node._fields:
        if name in _SKIP_FIELDS:
            continue
        value = getattr(node, name, None)
        if isinstance(value, list):
            for v in value:
                if isinstance(v, ast.AST):
                    yield name, v
        elif isinstance(value, ast.AST):
            yield name, value


def _is_main_guard(test) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and _const_str(test.comparators[0]) == "__main__"
            and isinstance(test.ops[0], ast.Eq))


def _is_type_checking(test) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _fold(test, env: dict[str, str]) -> bool | None:
    """Evaluate a test on the constant argv (``args.action == "show"``); None when it is not such a test."""
    if isinstance(test, ast.BoolOp):
        vals = [_fold(v, env) for v in test.values]
        if isinstance(test.op, ast.And):
            return False if False in vals else (True if all(v is True for v in vals) else None)
        return True if True in vals else (False if all(v is False for v in vals) else None)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        v = _fold(test.operand, env)
        return None if v is None else not v
    if isinstance(test, ast.Attribute) and isinstance(test.value, ast.Name) and test.attr in env:
        return bool(env[test.attr])
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.left, ast.Attribute)
            and isinstance(test.left.value, ast.Name) and test.left.attr in env):
        return None
    value, op, right = env[test.left.attr], test.ops[0], test.comparators[0]
    if isinstance(op, (ast.Eq, ast.NotEq)) and isinstance(right, ast.Constant):
        return (value == right.value) == isinstance(op, ast.Eq)
    if isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.List, ast.Set)) \
            and all(isinstance(e, ast.Constant) for e in right.elts):
        return (value in [e.value for e in right.elts]) == isinstance(op, ast.In)
    return None


# ----------------------------------------------------------------------------- the project


class Project:
    """The project's code, parsed on demand (each file once)."""

    def __init__(self, root: str | Path = ROOT, code_dirs: tuple[str, ...] = CODE_DIRS,
                 config_module: str = CONFIG_MODULE, params_file: str = PARAMS_FILE):
        self.root = Path(root).resolve()
        self.code_dirs = code_dirs
        self._modules: dict[str, Module | None] = {}
        self.units: dict[tuple, tuple] = {}  # scanned units, shared by the stages
        self._file_constants: dict[str, dict[str, int]] = {}
        self._scripts: dict[str, Module] = {}
        self.config_module = config_module
        self.params = self._load_params(params_file)
        self.sections, self.section_classes, self.machine = self._read_config_module()

    # -- files

    def _load_params(self, params_file: str) -> dict:
        p = self.root / params_file
        data = yaml.safe_load(p.read_text()) if p.is_file() else None
        return data if isinstance(data, dict) else {}

    def _in_code(self, path: Path) -> bool:
        try:
            rel = path.resolve().relative_to(self.root)
        except ValueError:
            return False
        return bool(rel.parts) and rel.parts[0] in self.code_dirs

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def _parse(self, name: str, path: Path, is_package: bool, key: str | None = None) -> Module:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        mod = Module(name, self.rel(path), tree, is_package, {}, {})
        if key is not None:
            self._modules[key] = mod  # before its imports are read: import cycles
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                mod.defs[stmt.name] = stmt
        for node in _walk_top(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for bname, target, _ in self.import_effects(node, mod):
                    if bname:
                        mod.bindings[bname] = target
        return mod

    def module(self, name: str, script_dir: Path | None = None) -> Module | None:
        """The project module ``name`` (``dirl.data.stages``), or None when it is not project code.
        ``script_dir``: a script's folder, first on its ``sys.path``."""
        if script_dir is not None:
            return self.module(name) or self._script_module(name, script_dir)
        if name in self._modules:
            return self._modules[name]
        self._modules[name] = None
        parts = name.split(".")
        pkg = self.root.joinpath(*parts) / "__init__.py"
        py = self.root.joinpath(*parts[:-1], parts[-1] + ".py")
        for path, is_pkg in ((pkg, True), (py, False)):
            if path.is_file() and self._in_code(path):
                return self._parse(name, path, is_pkg, key=name)
        return None

    def _script_module(self, name: str, script_dir: Path) -> Module | None:
        key = f"{script_dir}|{name}"
        if key not in self._modules:
            self._modules[key] = None
            parts = name.split(".")
            for path, is_pkg in ((script_dir.joinpath(*parts) / "__init__.py", True),
                                 (script_dir.joinpath(*parts[:-1], parts[-1] + ".py"), False)):
                if path.is_file() and self._in_code(path):
                    return self._parse(name, path, is_pkg, key=key)
        return self._modules[key]

    def script(self, path: str) -> Module:
        if path not in self._scripts:
            p = self.root / path
            if not p.is_file():
                raise EntryError(f"{path}: no such script")
            self._scripts[path] = self._parse("__main__", p, False)
        return self._scripts[path]

    # -- imports

    def import_effects(self, node, mod: Module) -> list[tuple[str | None, tuple, list[str]]]:
        """For an import statement in ``mod``: (bound name, target, modules loaded) per imported name."""
        out = []
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                loads = [".".join(parts[:i + 1]) for i in range(len(parts))]
                if a.asname:
                    out.append((a.asname, ("mod", a.name), loads))
                else:
                    out.append((parts[0], ("mod", parts[0]), loads))
            return out
        if node.level:  # relative: from .x import y
            pkg = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            base = ".".join(pkg + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if not base or base == "__future__":
            return out
        parts = base.split(".")
        loads = [".".join(parts[:i + 1]) for i in range(len(parts))]
        target_mod = self.module(base)
        for a in node.names:
            if a.name == "*":
                if target_mod:
                    for n in list(target_mod.defs) + list(target_mod.bindings):
                        if not n.startswith("_"):
                            out.append((n, ("sym", base, n), loads))
                continue
            bound = a.asname or a.name
            # `from pkg import x`: a submodule pkg/x.py unless pkg/__init__.py defines x itself
            if (target_mod is None or a.name not in target_mod.defs) and self.module(f"{base}.{a.name}") is not None:
                out.append((bound, ("mod", f"{base}.{a.name}"), loads + [f"{base}.{a.name}"]))
            else:
                out.append((bound, ("sym", base, a.name), loads))
        return out

    def resolve(self, target: tuple, attrs: list[str], _seen=None) -> tuple | None:
        """Follow ``target`` (a binding) through ``attrs``: ("def", module, name) | ("mod", module) | None."""
        _seen = _seen or set()
        if target in _seen:
            return None
        _seen.add(target)
        if target[0] == "sym":
            target = self._resolve_attr(target[1], target[2], _seen)
            if target is None:
                return None
        for a in attrs:
            if target[0] != "mod":
                return target  # an attribute of a function or class: the function or class is what is used
            target = self._resolve_attr(target[1], a, _seen)
            if target is None:
                return None
        return target

    def _resolve_attr(self, modname: str, attr: str, seen) -> tuple | None:
        mod = self.module(modname)
        if mod is None:
            return None
        if attr in mod.defs:
            return ("def", modname, attr)
        if attr in mod.bindings:
            return self.resolve(mod.bindings[attr], [], seen)
        if self.module(f"{modname}.{attr}") is not None:
            return ("mod", f"{modname}.{attr}")
        return None

    # -- config schema

    def _read_config_module(self) -> tuple[set[str], dict[str, tuple[str, str | None]], tuple[str, ...]]:
        """(sections, {section class name: (section, key)}, machine sections) from dirl/config.py (ast only)."""
        sections = {k for k, v in self.params.items() if isinstance(v, dict)}
        classes: dict[str, tuple[str, str | None]] = {}
        machine = DEFAULT_MACHINE_SECTIONS
        path = self.root / self.config_module
        if not path.is_file():
            return sections, classes, machine
        tree = ast.parse(path.read_text(encoding="utf-8"))
        cls_nodes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

        def fields(cls: ast.ClassDef) -> dict[str, str]:
            return {s.target.id: ast.unparse(s.annotation) for s in cls.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}

        if "Config" in cls_nodes:
            for sec, ann in fields(cls_nodes["Config"]).items():
                sections.add(sec)
                if ann in cls_nodes:
                    classes[ann] = (sec, None)
                    for key, sub in fields(cls_nodes[ann]).items():
                        if sub in cls_nodes and sub not in classes:
                            classes[sub] = (sec, key)
        for stmt in tree.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                [stmt.target] if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else []
            if any(isinstance(t, ast.Name) and t.id == "MACHINE_SECTIONS" for t in targets):
                try:
                    machine = tuple(ast.literal_eval(stmt.value))
                except ValueError:  # computed: ask the module itself
                    sys.path.insert(0, str(self.root))
                    try:
                        import importlib
                        machine = tuple(importlib.import_module("dirl.config").MACHINE_SECTIONS)
                    finally:
                        sys.path.remove(str(self.root))
        return sections, classes, machine

    def file_constants(self, mod: Module) -> dict[str, int]:
        """Module-level names assigned from the module's own ``__file__``: {name: line}."""
        if mod.path in self._file_constants:
            return self._file_constants[mod.path]
        out = self._file_constants[mod.path] = {}
        for stmt in mod.tree.body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None and any(
                    isinstance(x, ast.Name) and x.id == "__file__" for x in ast.walk(stmt.value)):
                for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                    if isinstance(t, ast.Name):
                        out[t.id] = stmt.lineno
        return out

    def params_keys(self, section: str) -> set[str]:
        sec = self.params.get(section)
        return set(sec) if isinstance(sec, dict) else set()


def _walk_top(tree: ast.Module) -> Iterator[ast.AST]:
    """Nodes of a module's import-time code (not function or method bodies, not TYPE_CHECKING blocks)."""
    stack = list(reversed(tree.body))
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(n, ast.If) and _is_type_checking(n.test):
            stack.extend(reversed(n.orelse))
            continue
        stack.extend(reversed([c for _, c in _children(n)]))


# ----------------------------------------------------------------------------- one unit of code


@dataclass
class UnitScan:
    imports: list[tuple[str | None, tuple, list[str]]] = field(default_factory=list)
    refs: list[list[str]] = field(default_factory=list)          # name chains used
    dyn_getattr: list[tuple[list[str], str | None, int]] = field(default_factory=list)  # (module chain, argv value)
    file_uses: list[tuple[list[str] | None, int]] = field(default_factory=list)  # (module chain, line) of __file__
    nodes: list[ast.AST] = field(default_factory=list)            # every node visited
    parent: dict[int, ast.AST] = field(default_factory=dict)


def scan_unit(node: ast.AST, *, top: bool, entry_script: bool, env: dict[str, str], project: Project,
              mod: Module, prune: set[int] = frozenset()) -> UnitScan:
    """Walk one unit: a module's import-time code (``top``), or a def / class with everything nested in it.

    ``env``: argv values by argparse positional name, folded in ``if`` tests and ``getattr(m, args.<name>)``.
    ``prune``: ids of nodes not to enter (the other entries of a dispatch table).
    """
    out = UnitScan()
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    stack: list[tuple[ast.AST, ast.AST | None]] = [(s, node) for s in reversed(node.body)] if top else [(node, None)]
    while stack:
        n, par = stack.pop()
        if id(n) in prune:
            continue
        if par is not None:
            out.parent[id(n)] = par
        out.nodes.append(n)
        kids: list[tuple[str, ast.AST]] = list(_children(n))
        if isinstance(n, defs):
            if top:
                # import time: decorators, defaults and bases run; a class's own statements run; bodies do not
                kids = [(f, c) for f, c in kids if f in ("decorator_list", "bases", "keywords", "args")]
                if isinstance(n, ast.ClassDef):
                    kids += [("body", s) for s in n.body]
            elif n is node:
                kids = [(f, c) for f, c in kids if f != "decorator_list"]  # they ran at import
            kids = [(f, c) for f, c in kids if f != "returns"]
        elif isinstance(n, ast.arguments) and top:
            kids = [(f, c) for f, c in kids if f in ("defaults", "kw_defaults")]
        elif isinstance(n, (ast.arg, ast.AnnAssign)):
            kids = [(f, c) for f, c in kids if f != "annotation"]
        elif isinstance(n, ast.If):
            verdict = None
            if _is_type_checking(n.test):
                verdict = False
            elif top and _is_main_guard(n.test):
                verdict = entry_script
            elif env:
                verdict = _fold(n.test, env)
            if verdict is not None:
                kids = [(f, c) for f, c in kids if f == ("body" if verdict else "orelse")]
        elif isinstance(n, ast.IfExp) and env:
            verdict = _fold(n.test, env)
            if verdict is not None:
                kids = [(f, c) for f, c in kids if f == ("body" if verdict else "orelse")]
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "set_defaults":
            # argparse dispatch (func=handler): the stage's own handler is an explicit root
            kids = [(f, c) for f, c in kids if not (isinstance(c, ast.keyword) and c.arg == "func")]
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out.imports.extend(project.import_effects(n, mod))
        if isinstance(n, (ast.Name, ast.Attribute)) or _is_getattr(n):
            inner = (isinstance(par, ast.Attribute) and par.value is n) or \
                (_is_getattr(par) and par.args[0] is n and _const_str(par.args[1]) is not None)
            ch = _chain(n)
            if ch and not inner and not (isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)):
                out.refs.append(ch)
        if _is_getattr(n) and _const_str(n.args[1]) is None:
            base, a = _chain(n.args[0]), n.args[1]
            value = env.get(a.attr) if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) else None
            if base:
                out.dyn_getattr.append((base, value, getattr(n, "lineno", 0)))
        if isinstance(n, ast.Name) and n.id == "__file__":
            out.file_uses.append((None, getattr(n, "lineno", 0)))
        elif isinstance(n, ast.Attribute) and n.attr == "__file__" and _chain(n.value):
            out.file_uses.append((_chain(n.value), getattr(n, "lineno", 0)))
        if isinstance(n, ast.Call) and _callee_name(n) == "import_module" and n.args and _const_str(n.args[0]):
            parts = n.args[0].value.split(".")
            out.imports.append((None, ("mod", n.args[0].value), [".".join(parts[:i + 1]) for i in range(len(parts))]))
        stack.extend((c, n) for _, c in reversed(kids))
    return out


# ----------------------------------------------------------------------------- config reads of one unit


def config_reads(scan: UnitScan, unit: ast.AST, project: Project, mod: Module, local: dict[str, tuple],
                 record) -> None:
    """Call ``record(section, key_or_WHOLE, node)`` for each params read in the unit; ``record(None, text, node)``
    for a dynamic read that cannot be resolved."""
    sections = project.sections
    cfg_names = set(CONFIG_NAMES)
    aliases: dict[str, tuple[str, str | None]] = {}   # name -> (section, key) of a section object
    dict_aliases: set[str] = set()
    parent = scan.parent
    messages = _message_nodes(scan.nodes)
    inner = record

    def record(section, key, node):  # noqa: F811 - a read only in a message is no read
        if id(node) not in messages:
            inner(section, key, node)

    def returns_config(call: ast.Call) -> bool | None:
        name = _callee_name(call)
        if name in CONFIG_FACTORIES:
            return True
        ch = _chain(call.func)
        if not ch:
            return None
        target = local.get(ch[0]) or mod.bindings.get(ch[0]) or \
            (("def", mod.name, ch[0]) if ch[0] in mod.defs else None)
        if target is None:
            return None
        r = project.resolve(target, ch[1:]) if target[0] != "def" else target
        if r and r[0] == "def":
            d = project.module(r[1])
            fn = d.defs.get(r[2]) if d else None
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.returns is not None:
                return bool(re.search(r"\bConfig\b", ast.unparse(fn.returns)))
        return None

    # which names hold a Config, a section, or a Config as a dict
    for n in scan.nodes:
        if isinstance(n, ast.arg) and n.annotation is not None:
            ann = ast.unparse(n.annotation)
            if re.search(r"\bConfig\b", ann):
                cfg_names.add(n.arg)
            else:
                for cls, sk in project.section_classes.items():
                    if re.search(rf"\b{re.escape(cls)}\b", ann):
                        aliases[n.arg] = sk
    for _ in range(2):  # aliases of aliases
        for n in scan.nodes:
            if not isinstance(n, ast.Assign) or len(n.targets) != 1:
                continue
            t, v = n.targets[0], n.value
            if isinstance(v, ast.Call) and returns_config(v):
                if isinstance(t, ast.Name):
                    cfg_names.add(t.id)
                elif isinstance(t, ast.Tuple) and t.elts and isinstance(t.elts[0], ast.Name):
                    cfg_names.add(t.elts[0].id)
                continue
            if not isinstance(t, ast.Name):
                continue
            path = _cfg_path(v, cfg_names)
            if path is not None and len(path) == 1 and path[0] in sections:
                aliases[t.id] = (path[0], None)
            elif path is None and isinstance(v, ast.Name) and v.id in cfg_names:
                cfg_names.add(t.id)
            elif any(_is_to_dict(x, cfg_names) for x in ast.walk(v)):
                dict_aliases.add(t.id)

    def context_read(node, section: str, key: str | None):
        """``node`` evaluates to section (key None) or section.key: what does its parent do with it?"""
        p = parent.get(id(node))
        if key is not None:
            record(section, key, node)
            return
        if isinstance(p, ast.Attribute) and p.value is node:
            record(section, WHOLE if p.attr.startswith("_") else p.attr, node)
        elif _is_getattr(p) and p.args[0] is node:
            k = _const_str(p.args[1])
            record(section, k if k else WHOLE, node)
        elif isinstance(p, ast.Assign) and p.value is node and len(p.targets) == 1 \
                and isinstance(p.targets[0], ast.Name) and p.targets[0].id in aliases:
            pass  # an alias: its uses are the reads
        else:
            record(section, WHOLE, node)

    for n in scan.nodes:
        # cfg.section[.key...] chains
        if isinstance(n, ast.Attribute) or _is_getattr(n):
            path = _cfg_path(n, cfg_names)
            if path is not None and len(path) == 1:
                if path[0] in sections:
                    context_read(n, path[0], None)
            elif _is_getattr(n) and _const_str(n.args[1]) is None and _cfg_path(n.args[0], cfg_names) == []:
                p = parent.get(id(n))
                record(None, f"getattr(cfg, {ast.unparse(n.args[1])})"
                       + (" then ." + p.attr if isinstance(p, ast.Attribute) else ""), n)
        # section objects held in a name
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in aliases:
            sec, key = aliases[n.id]
            context_read(n, sec, key)
        # a Config as a dict: d["train"]["lr"], d.get("tune", {}).get("x")
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in dict_aliases:
            sec_node, sec = _dict_item(n, parent)
            if sec_node is None:
                continue
            if sec is None:
                record(None, f"{ast.unparse(parent.get(id(n)))} (a computed section of the config dict)", n)
                continue
            if sec not in sections:
                continue
            q = parent.get(id(sec_node))
            if isinstance(q, ast.Subscript) and q.value is sec_node and not isinstance(q.ctx, ast.Load):
                continue  # d["train"]["x"] = ...: a write
            if isinstance(q, ast.Attribute) and q.value is sec_node and q.attr in DICT_WRITES:
                continue  # d["train"].update(...): a write
            key_node, key = _dict_item(sec_node, parent)
            if key_node is not None:
                if key is None:
                    record(None, f"{ast.unparse(parent.get(id(sec_node)))} (a computed key of {sec})", n)
                    record(sec, WHOLE, n)
                else:
                    record(sec, key, n)
            else:
                record(sec, WHOLE, n)


LOGGER_NAMES = {"log", "logger", "logging", "_log", "_logger", "LOG", "LOGGER"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical"}


def _message_nodes(nodes: list[ast.AST]) -> set[int]:
    """ids of the nodes inside error and console messages: ``raise ...``, an ``assert``'s message, ``print(...)``,
    ``logger.info(...)``, ``warnings.warn(...)``. A value read only there changes no output."""
    out: set[int] = set()
    for n in nodes:
        parts: list[ast.AST] = []
        if isinstance(n, ast.Raise):
            parts = [p for p in (n.exc, n.cause) if p is not None]
        elif isinstance(n, ast.Assert) and n.msg is not None:
            parts = [n.msg]
        elif isinstance(n, ast.Call):
            f = n.func
            if (isinstance(f, ast.Name) and f.id == "print") or (
                    isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                    and ((f.value.id in LOGGER_NAMES and f.attr in LOG_METHODS)
                         or (f.value.id == "warnings" and f.attr == "warn"))):
                parts = list(n.args) + [k.value for k in n.keywords]
        for p in parts:
            out.update(id(x) for x in ast.walk(p))
    return out


def _cfg_path(node, cfg_names: set[str]) -> list[str] | None:
    """The attribute path after a config root: ``cfg.train.lr`` -> ["train", "lr"], ``cfg`` -> []."""
    if isinstance(node, ast.Name):
        return [] if node.id in cfg_names else None
    if isinstance(node, ast.Attribute):
        base = _cfg_path(node.value, cfg_names)
        if base is not None:
            return base + [node.attr]
        return [] if node.attr in CONFIG_NAMES else None
    if _is_getattr(node) and _const_str(node.args[1]) is not None:
        base = _cfg_path(node.args[0], cfg_names)
        return None if base is None else base + [node.args[1].value]
    return None


def _is_to_dict(node, cfg_names) -> bool:
    if not isinstance(node, ast.Call):
        return False
    if isinstance(node.func, ast.Attribute) and node.func.attr == "to_dict":
        return _cfg_path(node.func.value, cfg_names) == []
    if _callee_name(node) == "asdict" and node.args:
        return _cfg_path(node.args[0], cfg_names) == []
    return False


def _dict_item(node, parent) -> tuple[ast.AST | None, str | None]:
    """For ``node`` a dict: (the node of ``node[k]`` / ``node.get(k)``, k) or (None, None) if not indexed."""
    p = parent.get(id(node))
    if isinstance(p, ast.Subscript) and p.value is node:
        return p, _const_str(p.slice)
    if isinstance(p, ast.Attribute) and p.value is node and p.attr == "get":
        call = parent.get(id(p))
        if isinstance(call, ast.Call) and call.func is p and call.args:
            return call, _const_str(call.args[0])
    return None, None


# ----------------------------------------------------------------------------- the stage closure


def _stage_command(stage: str, spec: dict) -> tuple[str, list[str]]:
    cmd = spec.get("cmd")
    if isinstance(cmd, list):
        if len(cmd) != 1:
            raise EntryError(f"stage {stage}: a cmd list is not supported ({cmd!r})")
        cmd = cmd[0]
    words = shlex.split(str(cmd or ""))
    for i, w in enumerate(words):
        if w.endswith(".py"):
            return w, words[i + 1:]
    raise EntryError(f"stage {stage}: cmd {cmd!r} is not of the form `python <script>.py <stage> [args]`, the "
                     f"only one pipeline/depgraph.py understands")


def _dispatch_table(script: Module, name: str) -> tuple[ast.Assign, ast.AST]:
    for stmt in script.tree.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict):
            keys = [_const_str(k) for k in stmt.value.keys if k is not None]
            if keys and all(keys) and name in keys:
                return stmt, stmt.value.values[keys.index(name)]
    raise EntryError(f"{script.path}: no module-level dict maps the stage name {name!r} to its entry")


_PROBE = r"""
import argparse, importlib, json, sys
root, requests = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, root)
class Parsed(BaseException):  # not an Exception: passes the callee's own `except Exception`
    pass
parse_args = argparse.ArgumentParser.parse_args
def capture(self, args=None, namespace=None):
    raise Parsed(parse_args(self, args, namespace))
argparse.ArgumentParser.parse_args = capture
plain = (str, int, float, bool, type(None))
out = {}
for key, (module, function, argv) in requests.items():
    try:
        getattr(importlib.import_module(module), function)(argv)
        out[key] = {"error": f"{module}.{function}({argv}) returned without parsing its argv"}
    except Parsed as p:
        ns = vars(p.args[0])
        func = ns.get("func")
        out[key] = {"func": [func.__module__, func.__qualname__] if callable(func) else None,
                    "env": {k: v for k, v in ns.items() if isinstance(v, plain)}}
    except SystemExit as e:
        out[key] = {"error": f"argparse refused {argv} (exit {e.code})"}
    except Exception as e:
        out[key] = {"error": f"{type(e).__name__}: {e}"}
print("\n" + json.dumps(out))
"""


def probe_argv(project: Project, requests: dict[str, tuple[str, str, list[str]]]) -> dict[str, dict]:
    """Run each ``module.function(argv)`` (a command-line ``main``) up to its ``parse_args`` and stop it there:
    {key: {"func": [module, qualname] of ``args.func``, "env": the parsed plain values}} or {"error": ...}.

    In a child process, so that nothing stays imported here: argparse reads an argparse tree (nested
    subparsers, parsers built in loops) better than any ast scan. Only the CLI module and what it imports at
    module level (plus before its ``parse_args``) are imported; no command runs.
    """
    if not requests:
        return {}
    import json
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _PROBE, str(project.root), json.dumps(requests)],
                          cwd=project.root, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise EntryError(f"cannot build the command-line parser: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _argv_calls(script: Module, table: ast.Assign) -> list[list[str]]:
    """Callees that receive the dispatch table's argv, innermost first: ``main`` in
    ``sys.exit(main(STAGES[sys.argv[1]] + sys.argv[2:]))``."""
    names = {t.id for t in table.targets if isinstance(t, ast.Name)}
    found = []
    for n in ast.walk(script.tree):
        if isinstance(n, ast.Call) and _chain(n.func) and any(
                isinstance(x, ast.Subscript) and isinstance(x.value, ast.Name) and x.value.id in names
                for arg in n.args for x in ast.walk(arg)):
            found.append((-n.col_offset, _chain(n.func)))
    return [ch for _, ch in sorted(found)]


@dataclass
class _Plan:
    stage: str
    script: Module
    argv: list[str]
    table: ast.Assign
    value: ast.AST
    request: tuple[str, str, list[str]] | None = None  # (module, function, argv) for an argv-style table


def _plan(project: Project, stage: str, spec: dict) -> _Plan:
    script_path, argv = _stage_command(stage, spec)
    if not argv:
        raise EntryError(f"stage {stage}: cmd names no stage after {script_path}")
    script = project.script(script_path)
    table, value = _dispatch_table(script, argv[0])
    plan = _Plan(stage, script, argv, table, value)
    if isinstance(value, (ast.List, ast.Tuple)) and all(_const_str(e) for e in value.elts):
        t = None
        callees = _argv_calls(script, table)
        for callee in callees:
            t = project.resolve(script.bindings[callee[0]], callee[1:]) if callee[0] in script.bindings else None
            if t is not None and t[0] == "def":
                break
        if t is None or t[0] != "def":
            raise EntryError(f"stage {stage}: {script.path} maps {argv[0]!r} to an argv, but passes it to no "
                             f"project function ({', '.join('.'.join(c) for c in callees) or 'no call found'})")
        plan.request = (t[1], t[2], [e.value for e in value.elts] + argv[1:])
    return plan


def analyze_stage(project: Project, stage: str, spec: dict, probed: dict | None = None) -> StageAnalysis:
    """The loaded files and the params reads of one dvc.yaml stage (``probed``: its :func:`probe_argv` result)."""
    plan = _plan(project, stage, spec)
    script, table, value = plan.script, plan.table, plan.value
    script_dir = (project.root / script.path).parent
    prune = {id(v) for v in table.value.values}  # the other stages' entries (this one is an explicit root)

    res = StageAnalysis(stage, "")
    loaded: dict[str, Module] = {"__main__": script}
    done: set[tuple] = set()
    queue: list[tuple] = []
    env_for: dict[str, dict[str, str]] = {}  # module name -> argv env folded in its units

    def load(name: str):
        m = project.module(name, script_dir)
        if m is None or (m.name in loaded and loaded[m.name] is m):
            return
        loaded[m.name] = m
        res.files.add(m.path)
        res.came_from.setdefault(("top", m.name), current[0])
        queue.append(("top", m.name))

    def lookup(m: Module, local: dict, ch: list[str]) -> tuple | None:
        head = ch[0]
        if head in local:
            return project.resolve(local[head], ch[1:])
        if head in m.defs:
            return ("def", m.name, head)
        if head in m.bindings:
            return project.resolve(m.bindings[head], ch[1:])
        return None

    def use(target: tuple | None):
        if target is None:
            return
        if target[0] == "mod":
            load(target[1])
        else:
            load(target[1])
            unit = ("def", target[1], target[2])
            res.came_from.setdefault(unit, current[0])
            queue.append(unit)

    current: list[tuple | None] = [None]

    def run_queue():
        while queue:
            unit = queue.pop()
            if unit in done:
                continue
            done.add(unit)
            current[0] = unit
            if unit[0] == "script":
                m, node, top = script, script.tree, True
            else:
                m = loaded.get(unit[1]) or project.module(unit[1], script_dir)
                if m is None:
                    continue
                top = unit[0] == "top"
                node = m.tree if top else m.defs.get(unit[2])
                if node is None:
                    continue
            env = env_for.get(m.name, {})
            ck = (unit, m.path, tuple(sorted(env.items(), key=str)))
            if ck not in project.units:  # the same unit in another stage: scanned once
                scan = scan_unit(node, top=top, entry_script=unit[0] == "script", env=env, project=project, mod=m,
                                 prune=prune if unit[0] == "script" else frozenset())
                local = {b: t for b, t, _ in scan.imports if b and not top}
                reads: list[tuple] = []
                config_reads(scan, node, project, m, local,
                             lambda sec, key, n: reads.append((sec, key, getattr(n, "lineno", "?"))))
                project.units[ck] = (scan.imports, local, scan.refs, scan.dyn_getattr, reads, scan.file_uses)
            imports, local, refs, dyn_getattr, reads, file_uses = project.units[ck]
            for ch, line in (file_uses if not top else []):  # a project module's __file__ (not a library's)
                t = lookup(m, local, ch) if ch else ("mod", m.name)
                if t is not None and t[0] == "mod" and project.module(t[1], script_dir) is not None:
                    res.file_uses.add(f"{m.path}:{line}")
            for ch in (refs if not top else []):  # a module constant made from __file__ (PACKAGE_DIR = ...)
                owner, name = m, ch[0]
                target = local.get(name) or (None if name in m.defs else m.bindings.get(name))
                if target is not None and target[0] == "sym":
                    owner, name = project.module(target[1]), target[2]
                elif target is not None:
                    continue
                line = project.file_constants(owner).get(name) if owner else None
                if line:
                    res.file_uses.add(f"{owner.path}:{line} ({name}, used by {_unit_name(unit)})")
            for _, _, loads in imports:
                for name in loads:
                    load(name)
            for sec, key, line in reads:
                if sec is None:
                    res.notes.append(f"{m.path}:{line}: dynamic read {key}")
                else:
                    res.reads.setdefault(sec, set()).add(key)
                    res.where.setdefault(sec if key == WHOLE else f"{sec}.{key}", set()).add(f"{m.path}:{line}")
            for ch in refs:
                use(lookup(m, local, ch))
            for base, value, line in dyn_getattr:
                t = lookup(m, local, base)
                if t is None or t[0] != "mod":
                    continue
                target = project.module(t[1])
                if value and target and value in target.defs:
                    use(("def", t[1], value))
                elif target:
                    res.notes.append(f"{m.path}:{line}: getattr({'.'.join(base)}, <computed>): every function "
                                     f"of {t[1]} counted")
                    for d in target.defs:
                        use(("def", t[1], d))
            if top:  # functions and classes a project decorator receives (registries) run at import
                for name, d in m.defs.items():
                    for dec in getattr(d, "decorator_list", []):
                        ch = _chain(dec.func if isinstance(dec, ast.Call) else dec)
                        t = lookup(m, local, ch) if ch else None
                        if t is not None and t[0] == "def":
                            use(("def", m.name, name))

    res.files.add(script.path)
    queue.append(("script",))
    if plan.request is not None:
        if probed is None:
            probed = probe_argv(project, {stage: plan.request})[stage]
        if probed.get("error") or not probed.get("func"):
            raise EntryError(f"stage {stage}: {'.'.join(plan.request[:2])}({plan.request[2]}) gives no handler "
                             f"(args.func): {probed.get('error', 'no func in the parsed arguments')}")
        module, qualname = probed["func"]
        if "." in qualname or project.module(module) is None:
            raise EntryError(f"stage {stage}: handler {module}.{qualname} is not a module-level project function")
        env_for[module] = probed["env"]  # the driver's branches on the parsed argv are folded
        run_queue()
        res.entry = f"{module}:{qualname} (argv {' '.join(plan.request[2])})"
        current[0] = ("entry",)
        use(("def", module, qualname))
        run_queue()
    else:
        ch = _chain(value)
        s = _const_str(value)
        if ch:
            t = lookup(script, {}, ch)
        elif s:
            modname, _, fn = s.replace(":", ".").rpartition(".")
            t = project.resolve(("mod", modname), [fn]) if project.module(modname) else None
        else:
            t = None
        if t is None or t[0] != "def":
            raise EntryError(f"stage {stage}: cannot resolve {ast.unparse(value)} in {script.path} to a function")
        res.entry = f"{t[1]}:{t[2]}"
        current[0] = ("entry",)
        use(t)
        run_queue()
    res.notes = sorted(set(res.notes))
    return res


def analyze(dvc: dict, project: Project | None = None) -> dict[str, StageAnalysis]:
    """{stage: StageAnalysis} for every stage of ``dvc`` (a parsed dvc.yaml) that runs a Python script."""
    project = project or Project()
    stages = {n: s for n, s in (dvc.get("stages") or {}).items() if _is_python_stage(s)}
    plans = {n: _plan(project, n, s) for n, s in stages.items()}
    probed = probe_argv(project, {n: p.request for n, p in plans.items() if p.request})
    return {n: analyze_stage(project, n, s, probed.get(n)) for n, s in stages.items()}


def _is_python_stage(spec: dict) -> bool:
    """A stage whose cmd runs Python (analysed; a cmd of another shape then fails loudly), not a shell tool."""
    cmd = spec.get("cmd")
    text = " ".join(cmd) if isinstance(cmd, list) else str(cmd or "")
    return bool(re.search(r"(^|[\s/])python[\d.]*\s|\.py\b", text))


# ----------------------------------------------------------------------------- the checks


def _norm(p: str) -> str:
    p = str(p).strip()
    while p.startswith("./"):
        p = p[2:]
    return p.rstrip("/")


def declared_deps(spec: dict) -> list[str]:
    out = []
    for d in spec.get("deps") or []:
        out.extend(_norm(k) for k in (d if isinstance(d, dict) else [d]))
    return out


def check_deps(dvc: dict, analyses: dict[str, StageAnalysis], root: str | Path = ROOT,
               code_dirs: tuple[str, ...] = CODE_DIRS) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({stage: files of the closure no dep covers}, {stage: declared code deps the stage does not load})."""
    root = Path(root)
    missing: dict[str, list[str]] = {}
    stale: dict[str, list[str]] = {}
    for stage, a in analyses.items():
        deps = declared_deps(dvc["stages"][stage])
        miss = sorted(f for f in a.files if not any(f == d or f.startswith(d + "/") for d in deps))
        if miss:
            missing[stage] = miss
        old = []
        for d in deps:
            if d.split("/")[0] not in code_dirs:
                continue  # data, results: outputs of other stages
            path = root / d
            if d.endswith(".py"):
                if d not in a.files:
                    old.append(d + ("" if path.exists() else "  (no such file)"))
            elif path.is_dir():
                pys = [p for p in path.rglob("*.py")]
                if pys and not any(f.startswith(d + "/") for f in a.files):
                    old.append(d + "/  (a code folder none of whose files the stage loads)")
            elif not path.exists():
                old.append(d + "  (no such file or folder)")
        if old:
            stale[stage] = old
    return missing, stale


def parse_declared_params(spec: dict) -> tuple[dict[str, set[str]], list[str], list[str]]:
    """({section: keys declared, "*" = whole} for params.yaml, [other-file entries], [raw params.yaml entries])."""
    own: dict[str, set[str]] = {}
    other: list[str] = []
    raw: list[str] = []

    def add(entry: str):
        raw.append(entry)
        sec, _, key = entry.partition(".")
        own.setdefault(sec, set()).add(key.split(".")[0] if key else WHOLE)

    for p in spec.get("params") or []:
        if isinstance(p, str):
            add(p)
        elif isinstance(p, dict):
            for file, keys in p.items():
                if _norm(file) == PARAMS_FILE:
                    for k in keys or []:
                        add(str(k))
                    if not keys:  # `params.yaml:` alone: the whole file
                        raw.append(PARAMS_FILE)
                        own["*file*"] = {WHOLE}
                else:
                    other += [f"{file}: {k}" for k in (keys or ["(whole file)"])]
    return own, other, raw


def check_params(dvc: dict, analyses: dict[str, StageAnalysis], project: Project) -> dict[str, list[str]]:
    """{stage: problems}: reads not declared, declarations not read, keys params.yaml lacks (machine sections
    exempt both ways)."""
    problems: dict[str, list[str]] = {}
    machine = set(project.machine)
    for stage, a in analyses.items():
        declared, _, raw = parse_declared_params(dvc["stages"][stage])
        out: list[str] = []
        where = f"stages.{stage}.params"
        for sec in sorted(a.reads):
            if sec in machine or sec not in project.sections:
                continue
            for k in sorted(a.reads[sec] - {WHOLE} - project.params_keys(sec)):
                at = ", ".join(sorted(a.where.get(f"{sec}.{k}", [])))
                out.append(f"reads `{sec}.{k}` ({at}), which {PARAMS_FILE} does not have (renamed or moved?)")
        if declared.pop("*file*", None):  # every read is declared, but any change of params.yaml re-runs it
            keys = [k for k in a.read_keys() if k.split(".")[0] not in machine]
            out.append(f"declares the whole {PARAMS_FILE}: replace it in {where} by the keys the stage reads: "
                       + (", ".join(f"`- {k}`" for k in keys) or "none"))
            problems[stage] = out
            continue
        for sec in sorted(a.reads):
            if sec in machine:
                continue
            keys = a.reads[sec]
            have = declared.get(sec, set())
            if WHOLE in keys and WHOLE not in have:
                at = ", ".join(sorted(a.where.get(sec, [])))
                out.append(f"reads the whole section `{sec}` ({at}) but does not declare it: add `- {sec}` to "
                           f"{where}" + (f" (and drop {', '.join(f'`- {sec}.{k}`' for k in sorted(have))})"
                                         if have else ""))
                continue
            if WHOLE in have:
                continue
            for k in sorted(k for k in keys if k != WHOLE and k not in have):
                at = ", ".join(sorted(a.where.get(f"{sec}.{k}", [])))
                out.append(f"reads `{sec}.{k}` ({at}) but does not declare it: add `- {sec}.{k}` to {where} "
                           f"(or the whole section `- {sec}`)")
        for sec in sorted(declared):
            if sec in machine:
                continue
            if sec not in project.sections:
                out.append(f"declares `{sec}`, which is not a section of {PARAMS_FILE}: remove it from {where}")
                continue
            reads = a.reads.get(sec, set())
            for k in sorted(declared[sec]):
                if k == WHOLE:
                    if not reads:
                        out.append(f"declares the section `{sec}` but reads nothing of it: remove `- {sec}` "
                                   f"from {where}")
                elif k not in project.params_keys(sec):
                    out.append(f"declares `{sec}.{k}`, which {PARAMS_FILE} does not have: remove `- {sec}.{k}` "
                               f"from {where}")
                elif k not in reads and WHOLE not in reads:
                    out.append(f"declares `{sec}.{k}` but never reads it: remove `- {sec}.{k}` from {where}")
        if out:
            problems[stage] = out
    return problems


def folder_deps(spec: dict, root: str | Path = ROOT, code_dirs: tuple[str, ...] = CODE_DIRS) -> list[str]:
    """The declared deps that are folders of code."""
    return [d for d in declared_deps(spec) if d.split("/")[0] in code_dirs and (Path(root) / d).is_dir()]


def _code_files(root: str | Path, folder: str) -> list[str]:
    root = Path(root)
    return [p.relative_to(root).as_posix() for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts]


def format_missing(missing: dict[str, list[str]]) -> str:
    lines = []
    for stage, files in missing.items():
        lines.append(f"stage '{stage}' loads {len(files)} project file(s) that dvc.yaml does not declare; "
                     f"add to stages.{stage}.deps:")
        lines += [f"      - {f}" for f in files]
    return "\n".join(lines)


def format_stale(stale: dict[str, list[str]]) -> str:
    lines = []
    for stage, deps in stale.items():
        lines.append(f"stage '{stage}' declares code deps it does not load; remove from stages.{stage}.deps:")
        lines += [f"      - {d}" for d in deps]
    return "\n".join(lines)


def format_params(problems: dict[str, list[str]]) -> str:
    return "\n".join(f"stage '{stage}': {p}" for stage, ps in problems.items() for p in ps)


def load_dvc(root: str | Path = ROOT) -> dict:
    return yaml.safe_load((Path(root) / "dvc.yaml").read_text())


# ----------------------------------------------------------------------------- command line


def report(root: str | Path = ROOT) -> tuple[str, bool]:
    project = Project(root)
    dvc = load_dvc(root)
    analyses = analyze(dvc, project)
    missing, stale = check_deps(dvc, analyses, root)
    params = check_params(dvc, analyses, project)
    machine = set(project.machine)
    out = [f"machine sections (exempt): {', '.join(sorted(machine))}", ""]
    for stage, a in analyses.items():
        _, other, raw = parse_declared_params(dvc["stages"][stage])
        out.append(f"{stage}: entry {a.entry}")
        out.append(f"  deps ({len(a.files)} project files the stage loads):")
        out += [f"    - {f}" for f in sorted(a.files)]
        reads = [k for k in a.read_keys() if k.split(".")[0] not in machine]
        out.append("  params (params.yaml keys it reads; a whole section also satisfies its keys):")
        out += [f"    - {k}" for k in reads] or ["    (none)"]
        out += [f"    - {o}   (another file: kept as declared)" for o in other]
        mach = [k for k in a.read_keys() if k.split(".")[0] in machine]
        if mach:
            out.append(f"  machine settings read (not declared on purpose): {', '.join(mach)}")
        decl_machine = [r for r in raw if r.split(".")[0] in machine]
        if decl_machine:
            out.append(f"  note: declares machine section(s) {', '.join(decl_machine)} (exempt; a change there "
                       f"re-runs the stage)")
        if stage in missing:
            out.append("  MISSING deps, add:")
            out += [f"    - {f}" for f in missing[stage]]
        if stage in stale:
            out.append("  STALE deps, remove:")
            out += [f"    - {d}" for d in stale[stage]]
        for d in folder_deps(dvc["stages"][stage], root):
            extra = sorted(p for p in _code_files(root, d) if p not in a.files)
            if extra and any(f.startswith(d + "/") for f in a.files):
                out.append(f"  note: folder dep {d} also covers {len(extra)} file(s) the stage does not load "
                           f"(a change there re-runs it): {', '.join(extra)}")
        if stage in params:
            out.append("  PARAMS:")
            out += [f"    {p}" for p in params[stage]]
        for n in a.notes:
            out.append(f"  note: {n}")
        if a.file_uses:
            out.append("  note: reachable code uses a project __file__ (files of the code tree read as data, e.g. a "
                       "package copied or hashed, are deps no import shows):")
            out += [f"    {u}" for u in sorted(a.file_uses)]
        out.append("")
    ok = not missing and not params
    out.append("dvc.yaml matches the code" if ok and not stale else
               f"dvc.yaml: {len(missing)} stage(s) with missing deps, {len(stale)} with stale deps, "
               f"{len(params)} with params problems")
    return "\n".join(out), ok


def write_dvc_yaml(root: str | Path = ROOT) -> list[str]:
    """Rewrite each Python stage's code deps and params in ``dvc.yaml`` to what the analysis finds, keeping its data
    deps, its file-scoped params (``results/tune/best.yaml: [...]``), its outs and every comment. Returns the
    stages it changed."""
    import io

    from ruamel.yaml import YAML

    path = Path(root) / "dvc.yaml"
    rt = YAML()
    rt.width, rt.preserve_quotes = 4096, True
    rt.indent(mapping=2, sequence=4, offset=2)
    doc = rt.load(path.read_text())
    dvc = load_dvc(root)
    project = Project(root)
    machine = set(project.machine)
    changed = []
    for stage, a in analyze(dvc, project).items():
        spec = doc["stages"][stage]
        code = [d for d in spec.get("deps", []) if _norm(str(d)).startswith(CODE_DIRS)]
        data = [d for d in spec.get("deps", []) if d not in code]
        keys = [k for k in a.read_keys() if k.split(".", 1)[0] not in machine]
        scoped = [p for p in spec.get("params", []) if not isinstance(p, str)]
        if code != sorted(a.files) or [p for p in spec.get("params", []) if isinstance(p, str)] != keys:
            spec["deps"], spec["params"] = data + sorted(a.files), keys + scoped
            changed.append(stage)
    buf = io.StringIO()
    rt.dump(doc, buf)
    path.write_text(buf.getvalue())
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(ROOT), help="project root (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a dep or a param is missing or wrong")
    ap.add_argument("--why", nargs=2, metavar=("STAGE", "FILE"), help="how STAGE comes to load FILE")
    ap.add_argument("--write", action="store_true",
                    help="rewrite dvc.yaml's code deps and params of every Python stage to what the code loads and "
                         "reads (data deps, outs and comments kept)")
    args = ap.parse_args(argv)
    if args.write:
        changed = write_dvc_yaml(args.root)
        print(f"dvc.yaml: {', '.join(changed) if changed else 'no stage'} rewritten")
        return 0
    if args.why:
        stage, path = args.why
        dvc = load_dvc(args.root)
        if stage not in (dvc.get("stages") or {}):
            ap.error(f"no stage {stage!r} in dvc.yaml")
        print("\n".join(analyze_stage(Project(args.root), stage, dvc["stages"][stage]).why(_norm(path))))
        return 0
    text, ok = report(args.root)
    print(text)
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
