#!/usr/bin/env python3
"""Checks of the chart's monitoring parts against the metrics the code registers.

    check.py metrics                      the exposition names the code registers, one a line
    check.py dashboard JSON RULES_OUT     the dashboard's structure, every query's metric names;
                                          writes its queries as recording rules to RULES_OUT
                                          (Grafana variables replaced) for `promtool check rules`
    check.py rules RENDERED RULES_OUT [BARE_OUT]
                                          the rendered PrometheusRule: its metric names; writes
                                          spec (the rule groups) to RULES_OUT for promtool, and
                                          to BARE_OUT without annotations (for promtool's alert
                                          unit tests, which would otherwise compare the texts)
    check.py objects RENDERED OUT         the rendered monitoring.coreos.com objects as a JSON
                                          array, for models/check-objects.mjs

The registered names are read from the Rust sources, not written down here: every
`register("name", "help", field.clone())` in the registration sites below, with the prefix of
that site's registry and the exposition suffixes prometheus-client gives the field's type (a
counter is exposed as NAME_total, a histogram as NAME_bucket, NAME_sum and NAME_count). A
registration site missing from the table, or a site whose prefix evidence is gone, fails the
check instead of being skipped. A `container` matcher (kube-state-metrics series) must name
SensorFlow's containers: the processors' binaries (api/src/processors.rs) or the operator's. Exit status 1 with one line per problem on any failure.
"""
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Registration site → (prefix of its registry, a line of the code that shows that prefix).
SITES = {
    "processors/runtime/src/metrics.rs": ("sensorflow", 'Registry::with_prefix("sensorflow")'),
    # JoinMetrics::register is handed the runtime's registry.
    "processors/apps/src/join.rs": ("sensorflow", "Metrics::new_with(|r| jm.register(r))"),
    # SinkMetrics::register makes a sub-registry of the runtime's.
    "processors/sink/src/metrics.rs": ("sensorflow_sink", 'r.sub_registry_with_prefix("sink")'),
    "operator/src/metrics.rs": ("sensorflow_operator", 'Registry::with_prefix("sensorflow_operator")'),
}
# Metrics of other exporters the chart's queries may use.
EXTERNAL = {
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
}
CONTAINERS = set()
REGISTER = re.compile(
    r'\bregister\(\s*"([a-z_][a-z0-9_]*)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*(?:[a-z_]+\.)?([a-z_][a-z0-9_]*)\.clone\(\)\s*,?\s*\)',
    re.S)
# Every call that registers a metric (a name literal first) or a collector.
CALL = re.compile(r'\bregister(?:_with_unit)?\(\s*"|\bregister_collector\(')


def field_type(src, field):
    """The declared type of `field` in a struct (`pub field: T,`) or a `let field = T...`."""
    m = re.search(r'\bpub\s+' + field + r'\s*:\s*([^\n]+?),?\s*$', src, re.M) or \
        re.search(r'\blet\s+' + field + r'\s*=\s*([^;]+);', src)
    return m.group(1) if m else None


def registered():
    """{exposition name: 'file: registered name (kind)'}, or exits listing the problems."""
    names, problems = {}, []
    # The repository's Rust files (tracked, or new and not ignored): never a target directory.
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others",
                            "--exclude-standard", "*.rs"], check=True, capture_output=True,
                           text=True).stdout.split()
    for rel in sorted(set(files)):
        path = ROOT / rel
        if "/tests/" in f"/{rel}" or "/benches/" in f"/{rel}" or not path.is_file():
            continue
        src = path.read_text()
        calls = len(CALL.findall(src))
        if not calls:
            continue
        if rel not in SITES:
            problems.append(f"{rel}: registers metrics but is not a known registration site (add it to SITES in {__file__})")
            continue
        prefix, evidence = SITES[rel]
        if evidence not in src:
            problems.append(f"{rel}: '{evidence}' not found: is its registry prefix still {prefix}?")
        found = REGISTER.findall(src)
        if len(found) != calls:
            problems.append(f"{rel}: {calls} register calls, {len(found)} understood (a new form of call?)")
        for name, field in found:
            ty = field_type(src, field)
            kind = next((k for k in ("Histogram", "Counter", "Gauge") if ty and k in ty), None)
            if kind is None:
                problems.append(f"{rel}: type of {field} (registered as {name}) not found")
                continue
            base = f"{prefix}_{name}"
            exposed = {"Counter": [base + "_total"], "Gauge": [base],
                       "Histogram": [base + "_bucket", base + "_sum", base + "_count"]}[kind]
            for e in exposed:
                names[e] = f"{rel}: {name} ({kind})"
    if problems or not names:
        sys.exit("\n".join(problems or ["no registered metrics found"]))
    return names


KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "inf", "nan", "atan2", "start", "end"}


def metric_names(expr):
    """The metric names a PromQL expression selects (strings, label matchers, ranges,
    grouping lists and function names removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    e = re.sub(r'\{[^}]*\}', ' ', e)
    e = re.sub(r'\[[^\]]*\]', ' ', e)
    e = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', ' ', e)
    e = re.sub(r'\boffset\s+-?[0-9a-z]+', ' ', e)
    out = []
    for m in re.finditer(r'(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*', e):
        if m.group(0).lower() in KEYWORDS or re.match(r'\s*\(', e[m.end():]):
            continue
        out.append(m.group(0))
    return out


def grafana_to_promql(expr):
    """A dashboard query as plain PromQL: Grafana's interval variables become 5m, any other
    variable (inside label matchers) the regex .*"""
    e = re.sub(r'\$\{?__(rate_interval|interval|range)\}?', '5m', expr)
    return re.sub(r'\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?', '.*', e)


def containers():
    """Container names a query may select: the processors' (their binaries' names in
    api/src/processors.rs, which the operator names its containers after) and the chart's
    operator container (templates/deployment.yaml)."""
    names = set(re.findall(r'pub const [A-Z_]+: &str = "([a-z-]+)";',
                           (ROOT / "api/src/processors.rs").read_text()))
    dep = (ROOT / "charts/sensorflow-operator/templates/deployment.yaml").read_text()
    names.update(re.findall(r'^\s+- name: ([a-z-]+)\n\s+image:', dep, re.M))
    if len(names) < 4:
        sys.exit(f"container names not found in api/src/processors.rs and the chart: {names}")
    return names


def check_names(where, expr, known, problems):
    for m in re.finditer(r'\bcontainer\s*(=~|=)\s*"([^"]*)"', expr):
        for c in m.group(2).split("|") if m.group(1) == "=~" else [m.group(2)]:
            if c not in CONTAINERS:
                problems.append(f"{where}: container {c!r} is none of SensorFlow's {sorted(CONTAINERS)}")
    names = metric_names(expr)
    if not names:
        problems.append(f"{where}: no metric name found in {expr!r}")
    for n in names:
        if n not in known and n not in EXTERNAL:
            hint = ""
            if n + "_total" in known:
                hint = f" (a counter: {n}_total)"
            problems.append(f"{where}: {n} is not a metric the code registers{hint}")


def yaml_dump(data, path):
    # JSON is YAML: promtool reads it as a rule file, and no YAML library is needed.
    pathlib.Path(path).write_text(json.dumps(data, indent=2) + "\n")


def dashboard(path, rules_out):
    known, problems = registered(), []
    try:
        d = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as err:
        sys.exit(f"{path}: not valid JSON: {err}")
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in d:
            problems.append(f"{path}: no {key}")
    variables = {v.get("name") for v in d.get("templating", {}).get("list", [])}
    if "datasource" not in variables:
        problems.append(f"{path}: no datasource variable (the dashboard would be tied to one data source)")
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r'label_values\((.*),\s*[a-z_]+\)$', q or "") if v.get("type") == "query" else None
        if v.get("type") == "query":
            if not m:
                problems.append(f"{path}: variable {v.get('name')}: not a label_values(selector, label) query")
            else:
                check_names(f"variable {v.get('name')}", grafana_to_promql(m.group(1)), known, problems)
    ids, rules, panels = set(), [], list(d.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))
    for p in panels:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate panel id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")) or g.get("x", 0) + g.get("w", 0) > 24:
            problems.append(f"{where}: gridPos {g} is not a place on the 24-column grid")
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not the ${{datasource}} variable")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{where}: duplicate refId")
        for t in targets:
            expr = t.get("expr", "")
            check_names(f"{where} {t.get('refId')}", expr, known, problems)
            rules.append({"record": f"dashboard:panel_{p.get('id')}:{t.get('refId')}",
                          "expr": grafana_to_promql(expr)})
    if problems:
        sys.exit("\n".join(problems))
    yaml_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, rules_out)
    print(f"{path}: {len(panels)} panels, {len(rules)} queries, every metric registered by the code "
          f"or one of {sorted(EXTERNAL)}")


def rules(rendered, rules_out, bare_out=None):
    import yaml  # PyYAML: reads the chart's rendered output
    known, problems = registered(), []
    docs = [doc for doc in yaml.safe_load_all(pathlib.Path(rendered).read_text()) if doc]
    prs = [doc for doc in docs if doc.get("kind") == "PrometheusRule"]
    if len(prs) != 1:
        sys.exit(f"{rendered}: {len(prs)} PrometheusRules, expected 1")
    pr = prs[0]
    if pr.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{rendered}: apiVersion {pr.get('apiVersion')}")
    groups = pr.get("spec", {}).get("groups", [])
    n = 0
    for g in groups:
        for r in g.get("rules", []):
            n += 1
            check_names(f"rule {r.get('alert') or r.get('record')}", str(r.get("expr", "")), known, problems)
            if r.get("alert") and "severity" not in r.get("labels", {}):
                problems.append(f"rule {r.get('alert')}: no severity label")
    if n == 0:
        problems.append(f"{rendered}: no rules")
    if problems:
        sys.exit("\n".join(problems))
    yaml_dump({"groups": groups}, rules_out)
    if bare_out:
        bare = json.loads(json.dumps(groups))
        for g in bare:
            for r in g.get("rules", []):
                r.pop("annotations", None)
        yaml_dump({"groups": bare}, bare_out)
    print(f"{rendered}: {n} rules, every metric registered by the code or one of {sorted(EXTERNAL)}")


def objects(rendered, out):
    """Writes the rendered monitoring.coreos.com objects as a JSON array (for
    models/check-objects.mjs)."""
    import yaml  # PyYAML: reads the chart's rendered output
    docs = [doc for doc in yaml.safe_load_all(pathlib.Path(rendered).read_text()) if doc]
    mon = [doc for doc in docs if str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/")]
    if not mon:
        sys.exit(f"{rendered}: no monitoring.coreos.com objects")
    pathlib.Path(out).write_text(json.dumps(mon, indent=2) + "\n")


def main(argv):
    global CONTAINERS
    CONTAINERS = containers()
    if argv[:1] == ["metrics"]:
        for name, where in sorted(registered().items()):
            print(f"{name}\t{where}")
    elif argv[:1] == ["dashboard"] and len(argv) == 3:
        dashboard(argv[1], argv[2])
    elif argv[:1] == ["objects"] and len(argv) == 3:
        objects(argv[1], argv[2])
    elif argv[:1] == ["rules"] and len(argv) in (3, 4):
        rules(*argv[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
