"""Render kube/monitoring/prometheusrule.yaml from the plain rule file beside it.

    python tests/tools/monitoring_rules.py           # rewrite prometheusrule.yaml
    python tests/tools/monitoring_rules.py --check   # exit 1 if it is out of date

The plain rule file (sensorstats-rules.yaml) is the one source of the alert
rules; the Prometheus Operator's `PrometheusRule` carries the same `groups`
under `spec`. The rule file's text is indented into place rather than parsed
and dumped, so its comments reach the Operator's object as they are.
tests/deploy/test_monitoring.py fails while the committed file differs from
this rendering.

Stdlib only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

MONITORING = Path(__file__).resolve().parents[2] / "kube" / "monitoring"
RULES = MONITORING / "sensorstats-rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"

HEADER = """\
# The alert rules of sensorstats-rules.yaml for the Prometheus Operator.
# Rendered from that file by tests/tools/monitoring_rules.py: edit the rule
# file, then run the script; a test fails while the two differ.
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: sensorstats
  labels:
    app.kubernetes.io/name: sensorstats
    app.kubernetes.io/part-of: sensorstats
spec:
"""


def rule_groups(text: str) -> str:
    """The rule file from its `groups:` line on: the part the Operator's object holds."""
    start = text.find("\ngroups:\n")
    if start < 0:
        raise ValueError(f"{RULES} has no top-level groups: line")
    return text[start + 1 :]


def render(rules_text: str) -> str:
    """The PrometheusRule whose `spec` is the rule file's `groups`."""
    body = "".join(
        "  " + line if line.strip() else line
        for line in rule_groups(rules_text).splitlines(keepends=True)
    )
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is up to date")
    options = parser.parse_args(argv)
    rendered = render(RULES.read_text())
    if options.check:
        current = PROMETHEUS_RULE.read_text() if PROMETHEUS_RULE.exists() else ""
        if current != rendered:
            print(f"{PROMETHEUS_RULE} is out of date: run {Path(__file__).name}")
            return 1
        return 0
    PROMETHEUS_RULE.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
