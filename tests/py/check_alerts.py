"""Checks a Prometheus alerting rules file for wormvault, independently of the daemon: it is
YAML with the structure Prometheus loads (groups of rules, each an alert with an expression,
a severity and annotations), every runbook link names a section of the runbook; it returns
the expressions (for a PromQL parser) and every wormvault metric they read (for the caller to
find in a live /metrics).
Usage: check_alerts.py RULES.yml RUNBOOK.md"""

import json
import re
import sys

import yaml

rules_path, runbook_path = sys.argv[1], sys.argv[2]
problems = []
with open(rules_path) as f:
    doc = yaml.safe_load(f)


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


with open(runbook_path) as f:
    anchors = {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", f.read(), re.M)}

metrics, names, exprs = set(), [], {}
groups = doc.get("groups") if isinstance(doc, dict) else None
if not groups:
    problems.append("no groups")
for g in groups or []:
    if not g.get("name") or not g.get("rules"):
        problems.append(f"group without a name or rules: {g!r}")
        continue
    for r in g["rules"]:
        name = r.get("alert")
        if not name:
            problems.append(f"a rule without `alert`: {r!r}")
            continue
        names.append(name)
        unknown = set(r) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        if unknown:
            problems.append(f"{name}: unknown keys {sorted(unknown)}")
        expr = r.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            problems.append(f"{name}: no expression")
            continue
        exprs[name] = expr
        if "for" in r and not re.fullmatch(r"\d+[smhd]", str(r["for"])):
            problems.append(f"{name}: `for` is not a duration: {r['for']!r}")
        if (r.get("labels") or {}).get("severity") not in ("warning", "critical"):
            problems.append(f"{name}: severity is not warning or critical")
        ann = r.get("annotations") or {}
        if not ann.get("summary"):
            problems.append(f"{name}: no summary")
        url = ann.get("runbook_url", "")
        m = re.fullmatch(r"docs/OPERATIONS\.md#([\w-]+)", url)
        if not m or m.group(1) not in anchors:
            problems.append(f"{name}: runbook_url {url!r} names no section of the runbook")
        for metric in re.findall(r"\bwormvault_[a-z0-9_]+", expr):
            metrics.add(metric.removesuffix("_bucket"))
if len(names) != len(set(names)):
    problems.append("an alert name is used twice")

print(json.dumps({"alerts": names, "exprs": exprs, "metrics": sorted(metrics), "problems": problems}))
