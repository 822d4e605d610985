"""Which TensorRT (and Polygraphy) API a source file uses, and whether one TensorRT version has all of it.

Run as a script inside a process where the real TensorRT bindings of one version import as ``tensorrt`` (see
``trt_bindings.py``); it reads a JSON request on stdin and prints a JSON report. The collector walks the code's AST:

* every ``trt.X.Y...`` attribute chain (``trt`` is the module everywhere in pfcn's TensorRT code);
* every attribute of a variable (or ``self.`` attribute) named in the file's ``TRT_OBJECTS`` table (name -> class);
* every keyword argument of a call to one of those (checked against the pybind11 signatures in ``__doc__``);
* the class returned by each TensorRT call that is assigned to a name: a TensorRT object must land in a name the
  table maps to that very class, so the table cannot drift from the code;
* methods of Python subclasses of TensorRT classes (``IProgressMonitor``) must exist on the base;
* calls to Polygraphy classes: keyword names against ``inspect.signature``, and — where a keyword switches a
  TensorRT feature inside Polygraphy (``CreateConfig(fp16=True)`` sets ``BuilderFlag.FP16``) — that feature's
  TensorRT attributes, read from Polygraphy's own source, in this version.

Version-specific code is written ``if trt_major(trt) >= 11:`` (any comparison with an int) or guarded by
``hasattr(trt, "X")``; the walker takes only the branches this version takes. Any other use of ``trt_major`` is an
error, so a version test cannot silently escape the check.
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
import re
import sys
from dataclasses import asdict, dataclass
from typing import Any

COMPARE = {ast.GtE: operator.ge, ast.Gt: operator.gt, ast.LtE: operator.le, ast.Lt: operator.lt,
           ast.Eq: operator.eq, ast.NotEq: operator.ne}


@dataclass(frozen=True)
class Use:
    kind: str  # "attr", "kwarg", "returns", "override", "poly-kwarg", "poly-attr", "poly-trt"
    owner: str  # dotted path below the tensorrt module ("" = the module), or a Polygraphy name
    name: str  # attribute / keyword
    where: str  # file:line
    extra: str = ""  # "returns": the variable assigned; "poly-trt": the Polygraphy keyword that needs it


class VersionTestError(ValueError):
    pass


def chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything that is not a pure name/attribute chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def table_of(tree: ast.Module) -> dict[str, str]:
    """The module-level ``TRT_OBJECTS = {...}`` literal (empty when absent)."""
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "TRT_OBJECTS" for t in targets):
                return ast.literal_eval(node.value)
    return {}


class Collector:
    """Collect the uses of one file for one TensorRT version (``trt`` is that version's module)."""

    def __init__(self, trt: Any, major: int, source: str, filename: str, table: dict[str, str] | None = None):
        self.trt, self.major, self.filename = trt, major, filename
        self.tree = ast.parse(source, filename)
        self.table = table_of(self.tree) if table is None else table
        self.uses: list[Use] = []
        self.poly_names: dict[str, Any] = {}  # local name -> Polygraphy object (from ``from polygraphy... import``)
        self.poly_vars: dict[str, Any] = {}  # variable -> Polygraphy class it holds
        self.dict_keys: dict[str, list[str]] = {}  # dicts filled by d["key"] = ..., for **d
        self.version_calls_ok: set[int] = set()
        self.used_table: set[str] = set()

    # -------------------------------------------------------------------------------------------- helpers
    def _where(self, node: ast.AST) -> str:
        return f"{self.filename}:{getattr(node, 'lineno', 0)}"

    def _trt_owner(self, node: ast.AST) -> tuple[str, str] | None:
        """(owner path, attribute) when ``node`` is an attribute of the TensorRT module or of a tabled object."""
        parts = chain(node)
        if not parts or len(parts) < 2:
            return None
        if parts[0] == "trt":
            return ".".join(parts[1:-1]), parts[-1]
        if parts[0] in self.table and len(parts) == 2:
            return self.table[parts[0]], parts[1]
        if parts[0] == "self" and len(parts) == 3 and parts[1] in self.table:
            return self.table[parts[1]], parts[2]
        return None

    def _truth(self, test: ast.AST) -> bool | None:
        """Whether this version takes ``test``: True, False, or None (not a version test: both branches)."""
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.left, ast.Call) \
                and isinstance(test.left.func, ast.Name) and test.left.func.id == "trt_major":
            right = test.comparators[0]
            if type(test.ops[0]) not in COMPARE or not isinstance(right, ast.Constant) \
                    or not isinstance(right.value, int):
                raise VersionTestError(f"{self._where(test)}: write version tests as trt_major(trt) <op> <int>")
            self.version_calls_ok.add(id(test.left))
            return COMPARE[type(test.ops[0])](self.major, right.value)
        if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "hasattr" \
                and len(test.args) == 2 and isinstance(test.args[1], ast.Constant):
            parts = chain(test.args[0])
            if parts and parts[0] == "trt":
                obj = self.trt
                for p in parts[1:]:
                    obj = getattr(obj, p, None)
                return obj is not None and hasattr(obj, test.args[1].value)
            return None
        if isinstance(test, ast.BoolOp):
            values = [self._truth(v) for v in test.values]
            if isinstance(test.op, ast.And):
                return False if False in values else (True if all(v is True for v in values) else None)
            return True if True in values else (False if all(v is False for v in values) else None)
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = self._truth(test.operand)
            return None if inner is None else not inner
        return None

    # -------------------------------------------------------------------------------------------- the walk
    def run(self) -> list[Use]:
        self.visit(self.tree)
        return self.uses

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.If, ast.IfExp)):
            truth = self._truth(node.test)
            for inner in ast.walk(node.test):
                if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) \
                        and inner.func.id == "trt_major" and id(inner) not in self.version_calls_ok:
                    raise VersionTestError(f"{self._where(inner)}: a version test the API check cannot read; "
                                           "write it as trt_major(trt) <op> <int>")
            self.visit(node.test)
            body = node.body if isinstance(node.body, list) else [node.body]
            orelse = node.orelse if isinstance(node.orelse, list) else [node.orelse]
            for child in (body if truth is not False else []) + (orelse if truth is not True else []):
                self.visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            self._imports(node)
        elif isinstance(node, ast.ClassDef):
            self._class(node)
        elif isinstance(node, ast.Attribute):
            self._attribute(node)
        elif isinstance(node, ast.Call):
            self._call(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            self._assign(node)
        for child in ast.iter_child_nodes(node):
            self.visit(child)

    def _attribute(self, node: ast.Attribute) -> None:
        owner = self._trt_owner(node)
        if owner is not None and isinstance(node.ctx, (ast.Load, ast.Store)):
            parts = chain(node)
            if parts[0] != "trt":
                self.used_table.add(parts[1] if parts[0] == "self" else parts[0])
            self.uses.append(Use("attr", owner[0], owner[1], self._where(node)))
        parts = chain(node)
        if parts and len(parts) == 2 and parts[0] in self.poly_vars:
            self.uses.append(Use("poly-attr", self.poly_vars[parts[0]].__name__, parts[1], self._where(node)))

    def _kwargs(self, node: ast.Call) -> list[tuple[str, ast.AST | None]]:
        out: list[tuple[str, ast.AST | None]] = [(k.arg, k.value) for k in node.keywords if k.arg]
        for k in node.keywords:
            if k.arg is None and isinstance(k.value, ast.Name):
                out += [(key, None) for key in self.dict_keys.get(k.value.id, [])]
        return out

    def _call(self, node: ast.Call) -> None:
        owner = self._trt_owner(node.func)
        if owner is not None:
            for kw, _ in self._kwargs(node):
                self.uses.append(Use("kwarg", ".".join(p for p in owner if p), kw, self._where(node)))
        poly = self._poly_callable(node.func)
        if poly is not None:
            cls, method = poly
            for kw, value in self._kwargs(node):
                if isinstance(value, ast.Constant) and value.value in (None, False):
                    continue
                self.uses.append(Use("poly-kwarg", f"{cls.__name__}{'.' + method if method else ''}", kw,
                                     self._where(node)))

    def _poly_callable(self, func: ast.AST) -> tuple[Any, str] | None:
        if isinstance(func, ast.Name) and func.id in self.poly_names:
            return self.poly_names[func.id], ""
        parts = chain(func)
        if parts and len(parts) == 2 and parts[0] in self.poly_vars:
            return self.poly_vars[parts[0]], parts[1]
        return None

    def _assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        value = node.value
        for target in targets:
            parts = chain(target)
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) \
                    and isinstance(target.slice, ast.Constant) and isinstance(target.slice.value, str):
                self.dict_keys.setdefault(target.value.id, []).append(target.slice.value)
            if not parts or value is None:
                continue
            name = parts[-1] if parts[0] == "self" and len(parts) == 2 else (parts[0] if len(parts) == 1 else None)
            if name is None:
                continue
            if isinstance(value, ast.Call):
                owner = self._trt_owner(value.func)
                if owner is not None:
                    self.used_table.add(name)
                    self.uses.append(Use("returns", owner[0], owner[1], self._where(node), name))
                if isinstance(value.func, ast.Name) and value.func.id in self.poly_names \
                        and inspect.isclass(self.poly_names[value.func.id]):
                    self.poly_vars[name] = self.poly_names[value.func.id]

    def _imports(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("polygraphy"):
            import importlib

            module = importlib.import_module(node.module)
            for alias in node.names:
                obj = getattr(module, alias.name, None)
                if obj is None:
                    self.uses.append(Use("poly-attr", node.module, alias.name, self._where(node)))
                    continue
                self.poly_names[alias.asname or alias.name] = obj

    def _class(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            owner = self._trt_owner(base)
            if owner is None:
                continue
            path = ".".join(p for p in owner if p)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                    self.uses.append(Use("override", path, item.name, self._where(item)))


# ------------------------------------------------------------------------------------------------ resolution
def resolve(trt: Any, path: str) -> Any:
    obj = trt
    for part in [p for p in path.split(".") if p]:
        obj = getattr(obj, part)
    return obj


def signatures(obj: Any) -> list[str]:
    """The pybind11 signature lines of a function/class (``name(a: T, b: U = ...) -> R``)."""
    if inspect.isclass(obj):
        obj = obj.__init__
    doc = getattr(obj, "__doc__", None) or ""
    return [line.strip() for line in doc.splitlines() if re.match(r"\s*(\d+\.\s*)?[A-Za-z_]\w*\(.*\)", line)]


def accepts_keyword(obj: Any, kw: str) -> bool:
    sigs = signatures(obj)
    if not sigs:  # a plain Python function of the bindings (tensorrt/__init__.py)
        try:
            return kw in inspect.signature(obj).parameters
        except (TypeError, ValueError):
            return False
    return any(re.search(rf"[(,]\s*{re.escape(kw)}\s*:", s) for s in sigs)


def returned_class(trt: Any, obj: Any) -> str | None:
    """The TensorRT class a call returns (a class itself for a constructor), from the pybind11 signature."""
    if inspect.isclass(obj):
        return obj.__name__ if getattr(trt, obj.__name__, None) is obj else None
    for s in signatures(obj):
        m = re.search(r"->\s*(?:tensorrt\w*\.tensorrt\.)?(\w+)\s*$", s)
        if m and inspect.isclass(getattr(trt, m.group(1), None)):
            return m.group(1)
    return None


def polygraphy_params(cls: Any, method: str = "") -> set[str] | None:
    """Keyword names a Polygraphy class (following ``**kwargs`` into base ``__init__``s) or method accepts."""
    if method:
        return set(inspect.signature(getattr(cls, method)).parameters)
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return names


def polygraphy_trt_needs(cls: Any, keyword: str) -> list[str]:
    """TensorRT attribute paths that Polygraphy's module uses when ``keyword`` is set: in every ``if self.ATTR``
    branch where ``self.ATTR`` is assigned from ``keyword`` in ``__init__`` (``try_set_flag("F")`` = BuilderFlag.F)."""
    source = inspect.getsource(sys.modules[cls.__module__])
    tree = ast.parse(source)
    attrs = {keyword}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            parts = chain(node.targets[0])
            if parts and parts[0] == "self" and len(parts) == 2 and any(
                    isinstance(n, ast.Name) and n.id == keyword for n in ast.walk(node.value)):
                attrs.add(parts[1])

    def mentions(test: ast.AST) -> bool:
        if isinstance(test, ast.UnaryOp):
            return False
        if isinstance(test, ast.BoolOp):
            return isinstance(test.op, ast.And) and any(mentions(v) for v in test.values)
        if isinstance(test, ast.Compare):
            return isinstance(test.ops[0], ast.IsNot) and mentions(test.left)
        parts = chain(test)
        return bool(parts and parts[0] == "self" and len(parts) == 2 and parts[1] in attrs)

    needs: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and mentions(node.test):
            for inner in [n for stmt in node.body for n in ast.walk(stmt)]:
                parts = chain(inner) if isinstance(inner, ast.Attribute) else None
                if parts and parts[0] == "trt" and len(parts) >= 2:
                    needs.append(".".join(parts[1:]))
                if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) \
                        and inner.func.id == "try_set_flag" and inner.args \
                        and isinstance(inner.args[0], ast.Constant):
                    needs.append(f"BuilderFlag.{inner.args[0].value}")
    return sorted(set(needs))


def check(trt: Any, major: int, files: dict[str, str], tables: dict[str, dict[str, str]] | None = None) -> dict:
    """Collect and resolve every use in ``files`` (name -> source) for this TensorRT; the JSON-ready report."""
    tables = tables or {}
    checked, missing, unused = [], [], []
    for filename, source in files.items():
        collector = Collector(trt, major, source, filename, tables.get(filename))
        uses = sorted(set(collector.run()), key=lambda u: (u.where, u.kind, u.owner, u.name))
        unused += [f"{filename}: TRT_OBJECTS[{n!r}] is not used" for n in collector.table
                   if n not in collector.used_table]
        for use in uses:
            problem = None
            try:
                if use.kind in ("attr", "override"):
                    resolve(trt, f"{use.owner}.{use.name}" if use.owner else use.name)
                elif use.kind == "kwarg":
                    if not accepts_keyword(resolve(trt, use.owner), use.name):
                        problem = f"{use.owner}() takes no keyword {use.name!r}"
                elif use.kind == "returns":
                    cls = returned_class(trt, resolve(trt, f"{use.owner}.{use.name}" if use.owner else use.name))
                    if cls is not None and collector.table.get(use.extra) != cls:
                        problem = (f"{use.extra!r} holds a tensorrt.{cls} but TRT_OBJECTS maps it to "
                                   f"{collector.table.get(use.extra)!r}: add it to the table")
                elif use.kind == "poly-kwarg":
                    cls_name, _, method = use.owner.partition(".")
                    cls = collector.poly_names.get(cls_name) or next(
                        c for c in collector.poly_vars.values() if c.__name__ == cls_name)
                    params = polygraphy_params(cls, method)
                    if use.name not in params:
                        problem = f"Polygraphy {use.owner}() takes no keyword {use.name!r}"
                    elif not method:
                        for need in polygraphy_trt_needs(cls, use.name):
                            try:
                                resolve(trt, need)
                            except AttributeError:
                                problem = (f"Polygraphy {use.owner}({use.name}=...) uses tensorrt.{need}, which "
                                           f"TensorRT {trt.__version__} lacks")
                                break
                            checked.append(asdict(Use("poly-trt", need, "", use.where, use.name)))
                elif use.kind == "poly-attr":
                    if "." in use.owner:  # a failed ``from polygraphy.x import name``
                        problem = f"polygraphy module {use.owner} has no {use.name!r}"
                    else:
                        cls = next(c for c in collector.poly_vars.values() if c.__name__ == use.owner)
                        getattr(cls, use.name)
            except AttributeError as e:
                problem = f"AttributeError: {e}"
            (missing if problem else checked).append(dict(asdict(use), problem=problem) if problem else asdict(use))
    return {"version": trt.__version__, "checked": checked, "missing": missing, "unused_table": unused}


def main() -> int:
    request = json.load(sys.stdin)
    import tensorrt as trt  # the bindings, installed under this name by the caller

    major = int(trt.__version__.split(".")[0])
    try:
        report = check(trt, major, request["files"], request.get("tables"))
    except VersionTestError as e:
        report = {"version": trt.__version__, "error": str(e)}
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
