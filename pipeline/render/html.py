"""report.html: one self-contained page (inline CSS, plots embedded as base64 PNG)."""
from __future__ import annotations

import base64
import html as _html
import json

from pipeline.render import tables
from pipeline.render.markdown import PLOTS

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f2f2f2} td:nth-child(-n+6){text-align:left}
tr.deployed td{background:#e8f4e8;font-weight:600} tr.baseline td{background:#eef2fa}
.headline{font-size:1.1em;background:#f7f7f7;border-left:4px solid #55a868;padding:0.6em 1em}
.warning{background:#fff3cd;border-left:4px solid #e0a800;padding:0.5em 1em}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0} pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
"""


def _e(text) -> str:
    return _html.escape(str(text))


def _table(headers, lines, row_attrs=None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, line in enumerate(lines):
        attrs = row_attrs[i] if row_attrs else ""
        body.append(f"<tr{attrs}>" + "".join(f"<td>{_e(c)}</td>" for c in line) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _measured(report: dict) -> str:
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    attrs = []
    for r in ok:
        cls = "deployed" if r.get("deployed") else ("baseline" if r["artifact"] == "teacher" else "")
        # The row's own methodology as a tooltip: each row says how it was measured.
        attrs.append(f' class="{cls}" title="{_e(r["methodology"])}"')
    return _table(tables.MEASURED_HEADERS, tables.measured(report), attrs)


def render(report: dict, plots: dict[str, bytes]) -> str:
    """The whole report.html with `plots` (name -> PNG bytes) embedded."""
    parts = [f"<h1>edgeship report: {_e(report['run'])}</h1>",
             f"<p>Generated {_e(report['generated'])}; benchmark entry {_e(report.get('benchmark_key'))}; "
             f"target {_e(report['settings'].get('target'))}.</p>"]
    for w in (report.get("upstream") or {}).get("warnings", []):
        parts.append(f'<p class="warning"><b>Warning:</b> {_e(w)}</p>')
    parts.append("<h2>Headline</h2>")
    for h in report["headlines"]:
        parts.append(f'<p class="headline">{_e(h["text"])}</p>')
        parts.append(_table(("", "teacher (PyTorch eager FP32)", f"deployed: {h['deployed']}", "change"),
                            tables.headline_table(h)))
    if not report["headlines"]:
        parts.append("<p>No headline: the target has no measured teacher row or nothing to deploy.</p>")
    parts += ["<h2>Measured</h2>", "<p>Hover a row for how it was measured; the full text is below.</p>",
              _measured(report)]
    missing = tables.not_measured(report)
    if missing:
        parts += ["<h2>Not measured here</h2>", _table(tables.NOT_MEASURED_HEADERS, missing)]
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts += [f"<h2>{_e(PLOTS.get(name, name))}</h2>",
                  f'<img alt="{_e(PLOTS.get(name, name))}" src="data:image/png;base64,{data}">']
    if report.get("per_class"):
        from pipeline.report.per_class import per_class_table
        parts += ["<h2>Per class</h2>", _table(*per_class_table(report["per_class"]))]
    parts.append("<h2>Environment</h2><ul>" + "".join(
        f"<li>{_e(line)}</li>" for line in tables.environment_lines(report["environment"])) + "</ul>")
    parts.append("<details><summary>Full environment record</summary><pre>"
                 + _e(json.dumps(report["environment"], indent=2)) + "</pre></details>")
    up = {k: v for k, v in (report.get("upstream") or {}).items() if k != "warnings"}
    if up:
        parts.append("<h2>Pipeline notes</h2><pre>" + _e(json.dumps(up, indent=2, default=str)) + "</pre>")
    parts.append("<h2>How each row was measured</h2><ul>" + "".join(
        f"<li><code>{_e(r['id'])}</code>: {_e(r['methodology'])}</li>"
        for r in report["rows"] if r["status"] == "ok") + "</ul>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>edgeship report: {_e(report['run'])}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
