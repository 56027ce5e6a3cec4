#!/usr/bin/env python3
"""Checks the flash-sale Grafana dashboard and its provisioning files.

    python3 deploy/observability/grafana/check.py          # check; exit 1 with the findings
    python3 deploy/observability/grafana/check.py --exprs  # print every target's expr, one
        JSON line each: {"panel": title, "expr": ...}, with $__rate_interval -> 1m and
        $product_id / ${product_id} -> .* substituted (for a test that runs them)

Standard library only; the provisioning YAML is parsed when PyYAML is importable, and
checked line by line otherwise.
"""

import json
import os
import re
import sys

try:
    import yaml
except ImportError:  # the CI lint venv has it; elsewhere the YAML checks are lighter
    yaml = None

HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARD = os.path.join(HERE, "dashboards", "flash-sale.json")
DASHBOARD_PROVIDER = os.path.join(HERE, "provisioning", "dashboards", "flash-sale.yaml")
DATASOURCES = os.path.join(HERE, "provisioning", "datasources", "prometheus.yaml")

COLUMNS = 24
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# What the test substitutes before it runs an expression; nothing else may be left with a `$`.
SUBSTITUTIONS = [
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("${product_id}", ".*"),
    ("$product_id", ".*"),
]


def rel(path):
    return os.path.relpath(path, os.getcwd())


def load_dashboard(findings):
    try:
        with open(DASHBOARD, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        findings.append(f"{rel(DASHBOARD)}: cannot read: {e}")
    except json.JSONDecodeError as e:
        findings.append(f"{rel(DASHBOARD)}: not JSON: {e}")
    return None


def all_panels(dashboard):
    """Top-level panels, then (for rows) the panels a collapsed row holds, in order."""
    for panel in dashboard.get("panels") or []:
        yield panel, True
        for inner in panel.get("panels") or []:
            yield inner, False


def panel_name(panel):
    return f"panel {panel.get('id')!r} ({panel.get('title', 'untitled')!r})"


def substitute(expr):
    for variable, value in SUBSTITUTIONS:
        expr = expr.replace(variable, value)
    return expr


def targets_of(panel, findings):
    """The panel's targets; a target without refId or expr is a finding."""
    targets = panel.get("targets")
    if targets is None:
        return []
    if not isinstance(targets, list):
        findings.append(f"{panel_name(panel)}: targets is not a list")
        return []
    good = []
    for i, target in enumerate(targets):
        where = f"{panel_name(panel)} target {i}"
        if not isinstance(target, dict):
            findings.append(f"{where}: not an object")
            continue
        ok = True
        for key in ("refId", "expr"):
            value = target.get(key)
            if not isinstance(value, str) or not value.strip():
                findings.append(f"{where}: no {key}")
                ok = False
        if ok:
            good.append(target)
    return good


def check_expr(where, expr, findings):
    """Cheap checks on one expression; a real Prometheus parses them in the Rust test."""
    for bracket in re.findall(r"\[([^\]]*)\]", expr):
        if bracket != "$__rate_interval":
            findings.append(f"{where}: range [{bracket}], use [$__rate_interval]: {expr}")
    if re.search(r"\b(rate|irate|increase)\s*\(", expr) and "[$__rate_interval]" not in expr:
        findings.append(f"{where}: rate()/increase() without [$__rate_interval]: {expr}")
    substituted = substitute(expr)
    if "$" in substituted:
        findings.append(f"{where}: a variable other than $__rate_interval and $product_id: {expr}")
    # Quotes and brackets balance (outside string literals).
    stack, quote, escaped = [], None, False
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in substituted:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                findings.append(f"{where}: unbalanced {ch!r}: {expr}")
                return
    if quote or stack:
        findings.append(f"{where}: unclosed {quote or stack[-1]!r}: {expr}")


def check_datasource_refs(node, path, findings):
    """Every `datasource` anywhere in the dashboard is {"type": "prometheus", "uid": "${datasource}"}."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}"
            if key == "datasource" and value != DATASOURCE_REF:
                findings.append(
                    f"{rel(DASHBOARD)}: {here} is {json.dumps(value)}, "
                    f"want {json.dumps(DATASOURCE_REF)}"
                )
            else:
                check_datasource_refs(value, here, findings)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_datasource_refs(value, f"{path}[{i}]", findings)


def check_layout(dashboard, findings):
    placed = []
    for panel, top_level in all_panels(dashboard):
        gp = panel.get("gridPos")
        name = panel_name(panel)
        if not isinstance(gp, dict):
            findings.append(f"{name}: no gridPos")
            continue
        try:
            x, y, w, h = (gp[k] for k in ("x", "y", "w", "h"))
        except KeyError as e:
            findings.append(f"{name}: gridPos without {e}")
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (x, y, w, h)):
            findings.append(f"{name}: gridPos values must be integers: {gp}")
            continue
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > COLUMNS:
            findings.append(f"{name}: gridPos {gp} is outside {COLUMNS} columns")
        if top_level:  # panels inside a collapsed row are laid out when it opens
            placed.append((name, x, y, w, h))
    for i, (a, ax, ay, aw, ah) in enumerate(placed):
        for b, bx, by, bw, bh in placed[i + 1:]:
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                findings.append(f"{a} overlaps {b}")


def check_templating(dashboard, findings):
    variables = {
        v.get("name"): v
        for v in (dashboard.get("templating") or {}).get("list") or []
        if isinstance(v, dict)
    }
    ds = variables.get("datasource")
    if ds is None:
        findings.append(f"{rel(DASHBOARD)}: no template variable `datasource`")
    elif ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        findings.append(
            f"{rel(DASHBOARD)}: variable `datasource` must be type datasource, query prometheus"
        )
    product = variables.get("product_id")
    if product is None:
        findings.append(f"{rel(DASHBOARD)}: no template variable `product_id`")
        return
    query = product.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    want = "label_values(product_stock, product_id)"
    if product.get("type") != "query" or query != want:
        findings.append(f"{rel(DASHBOARD)}: variable `product_id` must be a query `{want}`")
    if not (product.get("multi") and product.get("includeAll") and product.get("allValue") == ".*"):
        findings.append(
            f"{rel(DASHBOARD)}: variable `product_id` must be multi-select with All as `.*`"
        )


def check_dashboard(dashboard, findings):
    if not isinstance(dashboard, dict):
        findings.append(f"{rel(DASHBOARD)}: not a JSON object")
        return
    for key, want in (("uid", "flash-sale"), ("title", "Flash sale")):
        if dashboard.get(key) != want:
            findings.append(f"{rel(DASHBOARD)}: {key} is {dashboard.get(key)!r}, want {want!r}")
    if not isinstance(dashboard.get("schemaVersion"), int):
        findings.append(f"{rel(DASHBOARD)}: no schemaVersion")
    if not isinstance(dashboard.get("panels"), list) or not dashboard["panels"]:
        findings.append(f"{rel(DASHBOARD)}: no panels")
        return

    seen = {}
    for panel, _ in all_panels(dashboard):
        pid = panel.get("id")
        if not isinstance(pid, int) or isinstance(pid, bool):
            findings.append(f"{panel_name(panel)}: id is not an integer")
        elif pid in seen:
            findings.append(f"{panel_name(panel)}: id {pid} also used by {seen[pid]!r}")
        else:
            seen[pid] = panel.get("title")
        if not panel.get("title"):
            findings.append(f"{panel_name(panel)}: no title")
        if panel.get("type") == "row":
            if panel.get("targets"):
                findings.append(f"{panel_name(panel)}: a row with targets")
            continue
        if panel.get("datasource") is None:
            findings.append(f"{panel_name(panel)}: no datasource")
        targets = targets_of(panel, findings)
        if not targets and not panel.get("targets"):
            findings.append(f"{panel_name(panel)}: no targets")
        ref_ids = [t["refId"] for t in targets]
        if len(set(ref_ids)) != len(ref_ids):
            findings.append(f"{panel_name(panel)}: repeated refId in {ref_ids}")
        for target in targets:
            check_expr(f"{panel_name(panel)} target {target['refId']}", target["expr"], findings)

    check_layout(dashboard, findings)
    check_datasource_refs(dashboard, "$", findings)
    check_templating(dashboard, findings)


def read_text(path, findings):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        findings.append(f"{rel(path)}: cannot read: {e}")
        return None


def check_provisioning(findings):
    provider_text = read_text(DASHBOARD_PROVIDER, findings)
    datasource_text = read_text(DATASOURCES, findings)
    if provider_text is None or datasource_text is None:
        return
    if yaml is None:
        # Without PyYAML: the provider's path line, and the data source's url line.
        paths = re.findall(r"^\s+path:\s*(\S+)\s*$", provider_text, re.M)
        if not paths:
            findings.append(f"{rel(DASHBOARD_PROVIDER)}: no `path:`")
        for p in paths:
            if not p.strip("'\"").startswith("/"):
                findings.append(f"{rel(DASHBOARD_PROVIDER)}: path {p} is not absolute")
        if not re.search(r"^\s+type:\s*prometheus\s*$", datasource_text, re.M):
            findings.append(f"{rel(DATASOURCES)}: no data source of type prometheus")
        return

    for path, text in ((DASHBOARD_PROVIDER, provider_text), (DATASOURCES, datasource_text)):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            findings.append(f"{rel(path)}: not YAML: {e}")
            continue
        if not isinstance(doc, dict) or doc.get("apiVersion") != 1:
            findings.append(f"{rel(path)}: want a mapping with apiVersion: 1")
            continue
        if path == DASHBOARD_PROVIDER:
            providers = doc.get("providers")
            if not isinstance(providers, list) or not providers:
                findings.append(f"{rel(path)}: no providers")
                continue
            for i, provider in enumerate(providers):
                dir_path = ((provider or {}).get("options") or {}).get("path")
                if not isinstance(dir_path, str) or not os.path.isabs(dir_path):
                    findings.append(f"{rel(path)}: providers[{i}].options.path {dir_path!r} is not absolute")
                if (provider or {}).get("type", "file") != "file":
                    findings.append(f"{rel(path)}: providers[{i}] is not a file provider")
        else:
            sources = doc.get("datasources")
            if not isinstance(sources, list) or not any(
                isinstance(s, dict) and s.get("type") == "prometheus" and s.get("url")
                for s in sources
            ):
                findings.append(f"{rel(path)}: no prometheus data source with a url")


def print_exprs():
    findings = []
    dashboard = load_dashboard(findings)
    lines = []
    if isinstance(dashboard, dict):
        for panel, _ in all_panels(dashboard):
            for target in targets_of(panel, findings):
                lines.append({"panel": panel.get("title", ""), "expr": substitute(target["expr"])})
    elif dashboard is not None:
        findings.append(f"{rel(DASHBOARD)}: not a JSON object")
    if findings:
        return fail(findings)
    for line in lines:
        print(json.dumps(line))
    return 0


def fail(findings):
    print(f"grafana check: {len(findings)} finding(s):", file=sys.stderr)
    for finding in findings:
        print(f"  {finding}", file=sys.stderr)
    return 1


def main(argv):
    if argv[1:] == ["--exprs"]:
        return print_exprs()
    if argv[1:]:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    findings = []
    dashboard = load_dashboard(findings)
    if dashboard is not None:
        check_dashboard(dashboard, findings)
    check_provisioning(findings)
    if findings:
        return fail(findings)
    yaml_note = "" if yaml else " (PyYAML not installed: provisioning checked line by line)"
    print(f"grafana check: ok{yaml_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
