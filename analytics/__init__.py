"""Execution analytics: what orders cost and how venues performed.

- metrics.py: the definitions, as pure functions over order snapshots (exact Decimal).
- views.py:   the same definitions as SQL views for DuckDB and BigQuery (`view_statements`).
- report.py:  the report document (`tom report --json`, `GET /report`) and its text tables.
- html.py:    the self-contained HTML report with inline SVG plots.
Per-order TCA itself is computed inside the workflow by oms/tca.py and stored on the snapshot.
"""
