"""Every StatsD metric the package emits is documented, and the Grafana example matches.

The package source is scanned with ``ast``: calls to ``incr``/``timing``/``gauge`` on a
metrics object (and on the pystatsd pipeline in ``metrics.py``), f-string names resolved to
templates (``cost.{provider}.{model}`` -> ``cost.<provider>.<model>``), wrappers that forward a
name parameter (``PriceSync._incr``), and every skip reason that can reach
``Guard.skip`` (literals, module constants, class constants, reader/decoder ``error`` and
``skip_reason`` attributes, ``DecodeError`` messages). Anything the scan cannot resolve fails
the test, so a new metric needs either docs or a scanner update, never silence.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cost_middleware"
METRICS_DOC = ROOT / "docs" / "METRICS.md"
GRAFANA = ROOT / "examples" / "grafana"
DASHBOARD = GRAFANA / "cost-middleware.json"
COMPOSE = ROOT / "examples" / "docker-compose.yml"

KINDS = {"incr": "counter", "timing": "timer", "gauge": "gauge"}
#: ``.incr`` calls that are not metrics: Redis INCR of the price version key.
NOT_METRICS = {("pricing/redis_keys.py", "client")}
#: Attributes whose values the capture layer passes to ``Guard.skip`` (readers'
#: ``skip_reason``, decoders' and decompressors' ``error``).
REASON_ATTRIBUTES = {"skip_reason", "error"}
PLACEHOLDER = re.compile(r"<[^>]+>")


class Unresolved(Exception):
    """The scan met a metric name or skip reason it cannot turn into text."""


@dataclass
class Module:
    rel: str
    tree: ast.Module
    #: Module-level string constants, and names imported from package modules.
    constants: dict[str, str] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Class-level string constants, by attribute name (any class in the module).
    class_constants: dict[str, list[ast.expr]] = field(default_factory=dict)


@dataclass(frozen=True)
class Emitted:
    name: str
    kind: str
    where: str


def _load_modules(package: Path) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        module = Module(rel, ast.parse(path.read_text(), filename=str(path)))
        for node in module.tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = node.value
                for target in targets:
                    if (isinstance(target, ast.Name) and isinstance(value, ast.Constant)
                            and isinstance(value.value, str)):
                        module.constants[target.id] = value.value
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("cost_middleware."):
                source = node.module.removeprefix("cost_middleware.").replace(".", "/")
                for alias in node.names:
                    module.imports[alias.asname or alias.name] = (source, alias.name)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.Assign) and item.value is not None:
                        for target in item.targets:
                            if isinstance(target, ast.Name):
                                module.class_constants.setdefault(target.id, []).append(
                                    item.value)
        modules[rel] = module
    return modules


def _module_for(modules: dict[str, Module], source: str) -> Module | None:
    return modules.get(f"{source}.py") or modules.get(f"{source}/__init__.py")


def _constant(modules: dict[str, Module], module: Module, name: str) -> str | None:
    if name in module.constants:
        return module.constants[name]
    if name in module.imports:
        source, original = module.imports[name]
        other = _module_for(modules, source)
        if other is not None:
            return _constant(modules, other, original)
    return None


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _nodes_by_scope(
    tree: ast.AST,
) -> Iterator[tuple[ast.AST, Function | None, ast.ClassDef | None]]:
    """Every node with its innermost enclosing function and class (None when there is none)."""
    todo: list[tuple[ast.AST, Function | None, ast.ClassDef | None]] = [(tree, None, None)]
    while todo:
        node, function, cls = todo.pop()
        yield node, function, cls
        inner = node if isinstance(node, Function) else function
        inner_cls = node if isinstance(node, ast.ClassDef) else cls
        todo.extend((child, inner, inner_cls) for child in ast.iter_child_nodes(node))


def _declares_str(cls: ast.ClassDef, attr: str) -> bool:
    """``attr`` is annotated as a string in the class body or as ``self.<attr>``."""
    for node in ast.walk(cls):
        if isinstance(node, ast.AnnAssign) and "str" in ast.unparse(node.annotation):
            target = node.target
            if (isinstance(target, ast.Name) and target.id == attr) or (
                    isinstance(target, ast.Attribute) and target.attr == attr):
                return True
    return False


def _calls(node: ast.AST) -> Iterator[ast.Call]:
    for child in ast.walk(node):
        if isinstance(child, ast.Call):
            yield child


def _receiver(call: ast.Call) -> str:
    func = call.func
    return ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""


def _where(module: Module, node: ast.AST) -> str:
    return f"cost_middleware/{module.rel}:{getattr(node, 'lineno', '?')}"


def _template(modules: dict[str, Module], module: Module, expr: ast.expr) -> str:
    """A metric name: text, or a template with ``<placeholder>`` segments."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    if isinstance(expr, ast.Name):
        value = _constant(modules, module, expr.id)
        if value is not None:
            return value
    if isinstance(expr, ast.JoinedStr):
        parts = []
        for piece in expr.values:
            if isinstance(piece, ast.Constant):
                parts.append(str(piece.value))
            else:
                assert isinstance(piece, ast.FormattedValue)
                names = [n.id for n in ast.walk(piece.value) if isinstance(n, ast.Name)]
                parts.append(f"<{names[0] if names else 'value'}>")
        return "".join(parts)
    raise Unresolved(f"{_where(module, expr)}: metric name {ast.unparse(expr)!r}")


def scan_metrics(modules: dict[str, Module]) -> set[Emitted]:
    """Every metric name (or template) the package sends, with its StatsD type."""
    found: set[Emitted] = set()
    # (function name, parameter index counted without self, kind): wrappers forwarding a name.
    forwarders: set[tuple[str, int, str]] = set()
    for module in modules.values():
        for call, function, _ in _nodes_by_scope(module.tree):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            if not (isinstance(func, ast.Attribute) and func.attr in KINDS and call.args):
                continue
            receiver = _receiver(call)
            if (module.rel, receiver) in NOT_METRICS:
                continue
            kind = KINDS[func.attr]
            first = call.args[0]
            if module.rel == "metrics.py" and receiver == "pipe":
                # The flush re-sends aggregated names; only new names count here.
                if isinstance(first, ast.JoinedStr):
                    found.add(Emitted(_template(modules, module, first), kind,
                                      _where(module, call)))
                continue
            if not receiver.split(".")[-1].lower().endswith("metrics"):
                raise Unresolved(f"{_where(module, call)}: {ast.unparse(call)!r} is neither "
                                 "a metrics call nor listed in NOT_METRICS")
            params = [a.arg for a in function.args.args] if function is not None else []
            if isinstance(first, ast.Name) and first.id in params and function is not None \
                    and _constant(modules, module, first.id) is None:
                offset = 1 if params[0] in ("self", "cls") else 0
                forwarders.add((function.name, params.index(first.id) - offset, kind))
                continue
            found.add(Emitted(_template(modules, module, first), kind, _where(module, call)))
    for name, index, kind in forwarders:
        for module in modules.values():
            for call in _calls(module.tree):
                func = call.func
                called = func.attr if isinstance(func, ast.Attribute) else (
                    func.id if isinstance(func, ast.Name) else None)
                if called == name and len(call.args) > index:
                    found.add(Emitted(_template(modules, module, call.args[index]), kind,
                                      _where(module, call)))
    return found


class _ReasonScan:
    """Skip reasons: every value that can flow into ``Guard.skip``."""

    def __init__(self, modules: dict[str, Module]) -> None:
        self.modules = modules
        self.reasons: dict[str, str] = {}
        self.exceptions: set[str] = set()

    def run(self) -> dict[str, str]:
        for module in self.modules.values():
            for node, function, cls in _nodes_by_scope(module.tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr == "skip" and _receiver(node).endswith("guard") \
                        and node.args:
                    self._add(module, node.args[0], function)
                elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(self._reason_target(t, cls) for t in targets):
                        self._add(module, node.value, function)
        # Exceptions whose message becomes a reason (``self.error = str(exc)``).
        for module in self.modules.values():
            for call in _calls(module.tree):
                if isinstance(call.func, ast.Name) and call.func.id in self.exceptions \
                        and call.args:
                    self._add(module, call.args[0], None)
        return self.reasons

    @staticmethod
    def _reason_target(target: ast.expr, cls: ast.ClassDef | None) -> bool:
        """``x.skip_reason = ...`` anywhere; ``self.error = ...`` in a class whose ``error``
        is a string (decoders and decompressors; other ``error`` attributes hold exceptions)."""
        if not isinstance(target, ast.Attribute):
            return False
        if target.attr == "skip_reason":
            return True
        return target.attr == "error" and cls is not None and _declares_str(cls, "error")

    def _add(self, module: Module, expr: ast.expr, function: Function | None) -> None:
        where = _where(module, expr)
        if isinstance(expr, ast.Constant):
            if isinstance(expr.value, str):
                self.reasons.setdefault(expr.value, where)
            elif expr.value is not None:
                raise Unresolved(f"{where}: skip reason {expr.value!r}")
        elif isinstance(expr, ast.Name):
            value = _constant(self.modules, module, expr.id)
            if value is not None:
                self.reasons.setdefault(value, where)
                return
            local = _local_values(function, expr.id)
            if not local:
                raise Unresolved(f"{where}: skip reason {expr.id!r} is not a constant")
            for assigned in local:
                self._add(module, assigned, function)
        elif isinstance(expr, ast.BoolOp):
            for operand in expr.values:
                self._add(module, operand, function)
        elif isinstance(expr, ast.IfExp):
            self._add(module, expr.body, function)
            self._add(module, expr.orelse, function)
        elif isinstance(expr, ast.Attribute) and expr.attr in REASON_ATTRIBUTES:
            pass  # every assignment to these attributes is scanned on its own
        elif isinstance(expr, ast.Attribute) and any(
                expr.attr in m.class_constants for m in self.modules.values()):
            # A base class may sit in another module than the subclass setting the constant.
            for other in self.modules.values():
                for assigned in other.class_constants.get(expr.attr, []):
                    self._add(other, assigned, function)
        elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) \
                and expr.func.id == "str" and len(expr.args) == 1 \
                and isinstance(expr.args[0], ast.Name):
            caught = _caught(function, expr.args[0].id)
            if not isinstance(caught, ast.Name):
                raise Unresolved(f"{where}: skip reason {ast.unparse(expr)!r}")
            self.exceptions.add(caught.id)
        else:
            raise Unresolved(f"{where}: skip reason {ast.unparse(expr)!r}")


def _local_values(function: Function | None, name: str) -> list[ast.expr]:
    """What ``name`` is assigned in ``function`` (a local variable)."""
    if function is None:
        return []
    return [node.value for node in ast.walk(function)
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets)]


def _caught(function: Function | None, name: str) -> ast.expr | None:
    """The exception type bound to ``name`` by an ``except ... as name`` in ``function``."""
    if function is None:
        return None
    for node in ast.walk(function):
        if isinstance(node, ast.ExceptHandler) and node.name == name:
            return node.type
    return None


def scan_skip_reasons(modules: dict[str, Module]) -> dict[str, str]:
    """Every reason counted as ``skipped.<reason>``, with one place it comes from."""
    return _ReasonScan(modules).run()


@functools.cache
def emitted(package: Path = PACKAGE) -> tuple[frozenset[Emitted], dict[str, str]]:
    """What ``package`` emits (cached: several tests read the same scan)."""
    modules = _load_modules(package)
    return frozenset(scan_metrics(modules)), scan_skip_reasons(modules)


# -- the documentation ------------------------------------------------------------------------


def normalize(name: str) -> str:
    """Templates compare by shape: any placeholder matches any placeholder."""
    return PLACEHOLDER.sub("<*>", name)


def documented(text: str) -> dict[str, str]:
    """``name -> type`` from the doc's table rows (first cell a backticked name)."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 2 \
                and re.fullmatch(r"`[^`]+`", cells[0]):
            rows[normalize(cells[0].strip("`"))] = cells[1].lower()
    return rows


def missing_docs(metrics: frozenset[Emitted], reasons: dict[str, str], text: str) -> list[str]:
    docs = documented(text)
    problems = []
    seen: set[tuple[str, str]] = set()
    for metric in sorted(metrics, key=lambda m: (m.name, m.where)):
        if (metric.name, metric.kind) in seen:
            continue  # the same name sent from several places: one finding is enough
        seen.add((metric.name, metric.kind))
        kind = docs.get(normalize(metric.name))
        if kind is None:
            problems.append(f"{metric.name} ({metric.kind}, {metric.where}) is not in METRICS.md")
        elif kind != metric.kind:
            problems.append(f"{metric.name} is a {metric.kind}, METRICS.md says {kind}")
    for reason, where in sorted(reasons.items()):
        if f"skipped.{reason}" not in docs:
            problems.append(f"skipped.{reason} ({where}) is not in METRICS.md")
    return problems


def test_the_scan_finds_the_known_metrics() -> None:
    metrics, reasons = emitted()
    names = {m.name for m in metrics}
    # A few anchors of each kind of construct, so a broken scan cannot pass vacuously.
    assert {"request.overhead", "records.written", "queue.depth", "price.cache.hit",
            "sync.invalidations"} <= names
    assert {"cost.<provider>.<model>", "tokens.<kind>.<provider>.<model>",
            "skipped.<label>", "<name>.count"} <= names
    assert {"error_status", "not_provider_shape", "decompress_failed", "sse_event_too_large",
            "eventstream_crc", "json_array_syntax"} <= set(reasons)


def test_every_emitted_metric_is_documented() -> None:
    metrics, reasons = emitted()
    assert missing_docs(metrics, reasons, METRICS_DOC.read_text()) == []


def test_an_undocumented_metric_fails(tmp_path: Path) -> None:
    """What happens when someone adds a metric without docs (a copy of the package)."""
    copy = tmp_path / "cost_middleware"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    guard = copy / "guard.py"
    guard.write_text(guard.read_text().replace(
        'self._metrics.incr("skipped.internal_error")',
        'self._metrics.incr("skipped.internal_error")\n        self._metrics.gauge("brand.new", 1)',
    ))
    readers = copy / "usage" / "readers.py"
    readers.write_text(readers.read_text() + '\nNEW_REASON = "brand_new_reason"\n'
                       "def _new(call: Call) -> None:\n    call.skip_reason = NEW_REASON\n")
    metrics, reasons = emitted(copy)
    problems = missing_docs(metrics, reasons, METRICS_DOC.read_text())
    assert any(p.startswith("brand.new (gauge") for p in problems)
    assert any(p.startswith("skipped.brand_new_reason") for p in problems)


def test_an_unresolvable_name_fails_loudly() -> None:
    tree = ast.parse("def f(self, x):\n    name = x + 'y'\n    self.metrics.incr(name)\n")
    with pytest.raises(Unresolved):
        scan_metrics({"fake.py": Module("fake.py", tree)})


def test_the_doc_documents_the_sanitizing_and_the_caps() -> None:
    from cost_middleware import metrics

    text = METRICS_DOC.read_text()
    assert "[A-Za-z0-9_-]" in text
    for value in (metrics.MAX_LABEL_VALUES, metrics.MAX_TIMING_SAMPLES, metrics.MAX_LABEL_LENGTH):
        assert f"{value}" in text


# -- the Grafana example ----------------------------------------------------------------------

#: statsd's Graphite namespaces (legacy naming): where each metric type lands.
NAMESPACES = {"stats_counts.": "counter", "stats.timers.": "timer", "stats.gauges.": "gauge",
              "stats.": "counter"}
TIMER_STATS = re.compile(r"\.(mean|median|upper|lower|count|count_ps|sum|std"
                         r"|(mean|upper|lower|sum|count)_\d+)$")
SERIES = re.compile(r"stats(?:[A-Za-z0-9_.*$-]|\{[^}]*\})*")
BRACES = re.compile(r"\{([^}]*)\}")


def _expand(path: str) -> list[str]:
    """Graphite's ``{a,b}`` alternatives as separate paths."""
    match = BRACES.search(path)
    if match is None:
        return [path]
    return [expanded for choice in match.group(1).split(",")
            for expanded in _expand(path[:match.start()] + choice + path[match.end():])]


def dashboard_series() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    prefix = next(v for v in dashboard["templating"]["list"] if v["name"] == "prefix")
    series = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            text = target["target"].replace("$prefix", prefix["current"]["value"])
            for path in SERIES.findall(text):
                series.extend(_expand(path))
    return series


def _metric_of(series: str, prefix: str) -> tuple[str, str]:
    """(metric pattern, type) a Graphite series path stands for."""
    for namespace, kind in NAMESPACES.items():
        if series.startswith(namespace + prefix + "."):
            name = series.removeprefix(namespace + prefix + ".")
            if kind == "timer":
                name = TIMER_STATS.sub("", name)
            return name, kind
    raise AssertionError(f"{series} is not in a statsd namespace under {prefix}")


def _matches(pattern: str, documented_name: str) -> bool:
    """A Graphite glob against a documented name whose ``<x>`` segments match anything."""
    parts, names = pattern.split("."), documented_name.split(".")
    if len(parts) != len(names):
        return False
    return all(name.startswith("<") or re.fullmatch(part.replace("*", ".*"), name)
               for part, name in zip(parts, names, strict=True))


def test_the_dashboard_queries_only_documented_metrics() -> None:
    docs = documented(METRICS_DOC.read_text())
    series = dashboard_series()
    assert len(series) >= 10
    for path in series:
        pattern, kind = _metric_of(path, "cost_middleware")
        candidates = [name for name, doc_kind in docs.items()
                      if doc_kind == kind and _matches(pattern, name)]
        assert candidates, f"{path}: no documented {kind} matches {pattern}"


def test_the_dashboard_check_rejects_unknown_series() -> None:
    docs = documented(METRICS_DOC.read_text())

    def known(path: str) -> bool:
        pattern, kind = _metric_of(path, "cost_middleware")
        return any(k == kind and _matches(pattern, name) for name, k in docs.items())

    assert known("stats_counts.cost_middleware.records.written")
    assert known("stats.timers.cost_middleware.request.overhead.upper_99")
    assert not known("stats_counts.cost_middleware.records.lost")
    assert not known("stats.timers.cost_middleware.records.written.upper_99")  # a counter
    assert not known("stats.gauges.cost_middleware.cost.*.*")


def test_the_dashboard_has_the_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for words in ("cost", "tokens", "overhead", "cache hit", "queue", "spool", "written",
                  "dropped", "skip"):
        assert words in titles, words
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {"graphite"}


def _yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def test_compose_and_provisioning_are_consistent() -> None:
    compose = _yaml(COMPOSE)
    services = compose["services"]
    assert {"graphite", "grafana", "fake-provider", "app"} <= set(services)
    for service in services.values():
        for volume in service.get("volumes", []):
            host = volume.split(":", 1)[0]
            if host.startswith("."):
                assert (COMPOSE.parent / host).exists(), volume
    app_env = services["app"]["environment"]
    assert app_env["COST_MIDDLEWARE_STATSD_HOST"] == "graphite"
    datasources = _yaml(GRAFANA / "provisioning" / "datasources" / "graphite.yml")
    source = datasources["datasources"][0]
    assert (source["type"], source["uid"]) == ("graphite", "graphite")
    providers = _yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")
    folder = providers["providers"][0]["options"]["path"]
    mounts = [v.split(":")[1] for v in services["grafana"]["volumes"]]
    assert any(folder.startswith(m) or m.startswith(folder) for m in mounts)
