"""``report.html``: one self-contained page (inline CSS and SVG, no script, no CDN) that works
offline: the before/after table of every step, the accuracy-aware quantization's fallback, the
per-layer error of ONNX against MXNet as a plot, and a picture of the graph with the rewritten,
pruned and quantized nodes marked.

The graph picture is a layered layout: a node's row is its depth (the longest path from an
input), nodes of a row side by side in graph order. Parameters are not drawn (they are
counted in the table), nor the quantize/dequantize pairs (the "quantized" colour says where
they are): a ResNet-50 stays a readable column.
"""

from __future__ import annotations

import html
import math
from typing import Any

from graphopt.ir.graph import Graph

COLOURS = {"quantized": "#4caf50", "float fallback": "#e53935", "pruned": "#ff9800",
           "rewritten": "#1e88e5", "plain": "#eceff1"}
LEGEND = [("rewritten", "rewritten by a rule (border)"), ("pruned", "channels pruned (left bar)"),
          ("quantized", "int8 (fill)"), ("float fallback", "kept in float by the budget (fill)")]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#263238;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #cfd8dc}
.verdict{display:inline-block;padding:4px 10px;border-radius:4px;font-weight:600;margin:8px 0}
.ok{background:#e8f5e9;color:#1b5e20} .failed{background:#ffebee;color:#b71c1c}
table{border-collapse:collapse;font-size:13px} th,td{padding:4px 8px;border-bottom:1px solid #eceff1;text-align:right}
th{background:#f5f7f8;position:sticky;top:0} td.name,th.name{text-align:left}
tr.gate-failed td{background:#fff3f3} .muted{color:#78909c;font-size:12px}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px;border:1px solid #90a4ae}
.scroll{overflow:auto;max-height:900px;border:1px solid #eceff1}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def format_count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def format_figure(key: str, value: Any) -> str:
    """How the table writes each figure (the browser test reads them back this way)."""
    if value is None:
        return "-"
    if key in ("params", "param_bytes", "onnx_bytes", "macs"):
        return format_count(value)
    if key == "accuracy":
        return f"{100 * value:.2f}%"
    if key in ("latency_mxnet_ms", "latency_onnxruntime_ms"):
        return f"{value:.3f}"
    if key == "sqnr_db":
        return f"{value:.2f}"
    if key == "relative_error":
        return f"{value:.2e}"
    return str(value)


COLUMNS = [("params", "params"), ("param_bytes", "param bytes"), ("onnx_bytes", "ONNX bytes"),
           ("macs", "MACs"), ("latency_mxnet_ms", "MXNet ms"),
           ("latency_onnxruntime_ms", "onnxruntime ms"), ("accuracy", "accuracy"),
           ("sqnr_db", "SQNR dB"), ("relative_error", "rel. error")]


def _table(report: dict) -> str:
    head = "".join(f"<th>{_e(title)}</th>" for _, title in COLUMNS)
    rows = []
    for record in report["steps"]:
        if record["kind"] == "export":
            continue
        figures = record.get("figures", {})
        gate = record.get("gate")
        verdict = "-" if gate is None else ("passed" if gate["passed"] else "FAILED")
        cells = "".join(f'<td data-key="{key}">{_e(format_figure(key, figures.get(key)))}</td>'
                        for key, _ in COLUMNS)
        css = ' class="gate-failed"' if gate is not None and not gate["passed"] else ""
        rows.append(f'<tr data-step="{_e(record["name"])}"{css}><td class="name">'
                    f'{_e(record["name"])}</td><td class="name">{_e(record["kind"])}</td>'
                    f'{cells}<td class="name">{_e(verdict)}{_gate_detail(gate)}</td></tr>')
    return (f'<table id="steps"><thead><tr><th class="name">step</th><th class="name">kind</th>'
            f'{head}<th class="name">gate</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
            '<p class="muted">SQNR and relative error: the step\'s outputs against the model its '
            'gate compares with (the previous step unless said otherwise). Latency: median of '
            'single-sample runs on this machine, for orientation only.</p>')


def _gate_detail(gate: dict | None) -> str:
    if not gate:
        return ""
    parts = [f"{c['criterion']} {_short(c['measured'])} / {c['limit']}" for c in gate["checks"]]
    return f'<div class="muted">vs {_e(gate.get("reference", gate["against"]))}: {_e("; ".join(parts))}</div>'


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _budget(report: dict) -> str:
    parts = []
    for record in report["steps"]:
        budget = record.get("budget")
        if not budget:
            continue
        goal = ", ".join(f"{k} {v}" for k, v in (("max accuracy drop", budget["max_accuracy_drop"]),
                                                  ("min SQNR dB", budget["min_sqnr"])) if v is not None)
        verdict = ("met" if budget["met"] else "MISSED: the best model found is written")
        rows = "".join(
            f"<tr><td>{k}</td><td class='name'>{_e(s['float_fallback'][-1] if k else '-')}</td>"
            f"<td>{_e(format_figure('accuracy', s['accuracy']))}</td>"
            f"<td>{_e(format_figure('sqnr_db', s['sqnr_db']))}</td></tr>"
            for k, s in enumerate(budget["steps"]))
        parts.append(f"<h2>Accuracy-aware quantization ({_e(record['name'])})</h2>"
                     f'<div class="verdict {"ok" if budget["met"] else "failed"}">budget {_e(goal)}: '
                     f"{_e(verdict)}</div><p>kept in float: "
                     f"{_e(', '.join(budget['float_fallback']) or 'nothing')}</p>"
                     "<table><thead><tr><th>layers in float</th><th class='name'>the one added, "
                     "most sensitive first</th>"
                     f"<th>accuracy</th><th>SQNR dB</th></tr></thead><tbody>{rows}</tbody></table>")
    return "".join(parts)


def error_plot(layers: list[dict], limit: float | None = None, width: int = 900,
               height: int = 260) -> str:
    """An SVG of log10(relative error) per layer, in graph order, ONNX against MXNet."""
    points = [(i, layer) for i, layer in enumerate(layers) if layer["relative_error"] is not None]
    if not points:
        return '<p class="muted">no layer was compared</p>'
    floor = 1e-12
    values = [math.log10(max(layer["relative_error"], floor)) for _, layer in points]
    low, high = math.floor(min(values)), math.ceil(max(values + ([math.log10(limit)] if limit else [])))
    high = max(high, low + 1)
    left, right, top, bottom = 60, 10, 10, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    x = lambda i: left + (plot_w * i / max(1, len(layers) - 1))  # noqa: E731
    y = lambda v: top + plot_h * (high - v) / (high - low)  # noqa: E731
    grid = "".join(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   f'stroke="#eceff1"/><text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" '
                   f'text-anchor="end">{"0" if v == low and low <= -12 else f"1e{v}"}</text>'
                   for v in range(low, high + 1))
    path = " ".join(f"{'M' if k == 0 else 'L'}{x(i):.1f},{y(v):.1f}"
                    for k, ((i, _), v) in enumerate(zip(points, values)))
    dots = "".join(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="#1e88e5">'
                   f'<title>{_e(layer["name"])} ({_e(layer["op"])}): {layer["relative_error"]:.3e}'
                   f'</title></circle>' for (i, layer), v in zip(points, values))
    tolerance = ""
    if limit:
        tolerance = (f'<line x1="{left}" x2="{width - right}" y1="{y(math.log10(limit)):.1f}" '
                     f'y2="{y(math.log10(limit)):.1f}" stroke="#e53935" stroke-dasharray="4 3"/>'
                     f'<text x="{width - right}" y="{y(math.log10(limit)) - 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#e53935">gate rtol {limit:g}</text>')
    return (f'<svg id="error-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="img" aria-label="per-layer relative error">{grid}'
            f'<path d="{path}" fill="none" stroke="#90caf9"/>{dots}{tolerance}'
            f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="12" text-anchor="middle">'
            f'layer (graph order), {len(points)} compared</text></svg>')


def _visible(graph: Graph) -> tuple[list, dict[str, list[str]]]:
    """The nodes drawn (inputs and op nodes, without parameters and quantize/dequantize) and
    each one's drawn predecessors, looking through the hidden nodes."""
    from graphopt.quantize.ops import OP_TYPES
    def hidden(node) -> bool:
        if node.is_variable:
            return node.name not in graph.input_names
        return node.op == "Custom" and node.attrs.get("op_type") in OP_TYPES
    order = [graph.node(name) for name in graph.topological_order()]
    drawn_inputs: dict[str, list[str]] = {}
    for node in order:
        sources = []
        for tensor in graph.inputs_of(node.name):
            producer = graph.node(tensor.node)
            sources.extend(drawn_inputs.get(producer.name, []) if hidden(producer)
                           else [producer.name])
        drawn_inputs[node.name] = list(dict.fromkeys(sources))
    visible = [node for node in order if not hidden(node)]
    return visible, {node.name: drawn_inputs[node.name] for node in visible}


def graph_picture(graph: Graph, marks: dict[str, list[str]]) -> str:
    visible, preds = _visible(graph)
    depth: dict[str, int] = {}
    for node in visible:
        depth[node.name] = 1 + max((depth[p] for p in preds[node.name]), default=-1)
    rows: dict[int, list] = {}
    for node in visible:
        rows.setdefault(depth[node.name], []).append(node)
    box_w, box_h, gap_x, gap_y, margin = 190, 30, 20, 22, 12
    widest = max(len(row) for row in rows.values())
    width = margin * 2 + widest * box_w + (widest - 1) * gap_x
    height = margin * 2 + len(rows) * (box_h + gap_y)
    place = {}
    for d, row in rows.items():
        row_width = len(row) * box_w + (len(row) - 1) * gap_x
        start = (width - row_width) / 2
        for k, node in enumerate(row):
            place[node.name] = (start + k * (box_w + gap_x), margin + d * (box_h + gap_y))
    mark_of = {mark: set(names) for mark, names in marks.items()}
    edges = []
    for node in visible:
        x2, y2 = place[node.name]
        for p in preds[node.name]:
            x1, y1 = place[p]
            edges.append(f'<line x1="{x1 + box_w / 2:.1f}" y1="{y1 + box_h:.1f}" '
                         f'x2="{x2 + box_w / 2:.1f}" y2="{y2:.1f}" stroke="#b0bec5"/>')
    boxes = []
    for node in visible:
        x, y = place[node.name]
        status = [m for m in COLOURS if node.name in mark_of.get(m, ())]
        fill = next((COLOURS[m] for m in ("float fallback", "quantized") if m in status),
                    COLOURS["plain"])
        stroke, stroke_w = ((COLOURS["rewritten"], 3) if "rewritten" in status else ("#90a4ae", 1))
        label = node.name if len(node.name) <= 24 else node.name[:11] + "…" + node.name[-11:]
        op = "input" if node.is_variable else node.op
        bar = (f'<rect x="{x:.1f}" y="{y:.1f}" width="7" height="{box_h}" '
               f'fill="{COLOURS["pruned"]}"/>' if "pruned" in status else "")
        boxes.append(
            f'<g class="node" data-node="{_e(node.name)}" data-marks="{_e(",".join(status))}">'
            f'<title>{_e(node.name)} ({_e(op)}){": " + _e(", ".join(status)) if status else ""}'
            f'</title><rect x="{x:.1f}" y="{y:.1f}" width="{box_w}" height="{box_h}" rx="4" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="{stroke_w}"/>{bar}'
            f'<text x="{x + box_w / 2:.1f}" y="{y + 12:.1f}" font-size="10" text-anchor="middle">'
            f'{_e(label)}</text><text x="{x + box_w / 2:.1f}" y="{y + 25:.1f}" font-size="10" '
            f'text-anchor="middle" fill="#37474f">{_e(op)}</text></g>')
    return (f'<svg id="graph-picture" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" role="img" aria-label="the optimized graph">'
            f'{"".join(edges)}{"".join(boxes)}</svg>')


def _legend() -> str:
    return '<div class="legend">' + "".join(
        f'<span><i style="background:{COLOURS[m]}"></i>{_e(text)}</span>' for m, text in LEGEND) + "</div>"


def render_html(report: dict, graph: Graph) -> str:
    """The page for ``report`` (the report.json document) with ``graph`` (the final model)."""
    ok = report["ok"]
    export = next((r for r in report["steps"] if r["kind"] == "export"), None)
    plot = ('<p class="muted">not exported (the run stopped before)</p>' if export is None else
            error_plot(export["per_layer"], next((c["limit"] for c in export["gate"]["checks"]
                                                  if c["criterion"] == "relative error"), None)))
    if export is not None and export.get("mxnet_int8"):
        int8 = export["mxnet_int8"]
        plot += (f'<p id="mxnet-int8">MXNet\'s own int8 model (oneDNN, the MXNet file written): '
                 f'accuracy {_e(format_figure("accuracy", int8["accuracy"]))}, SQNR '
                 f'{_e(format_figure("sqnr_db", int8["sqnr_db"]))} dB against the float model '
                 f'(measured, not gated)</p>')
    files = "".join(f"<li><code>{_e(k)}</code>: {_e(v)}</li>" for k, v in report["files"].items())
    counts = {mark: len(names) for mark, names in report["marks"].items()}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>graphopt report: {_e(report['pipeline']['model'])}</title>
<style>{CSS}</style></head><body>
<h1>graphopt optimize: {_e(report['pipeline']['model'])}</h1>
<div class="verdict {'ok' if ok else 'failed'}" id="verdict">{'all gates passed' if ok else _e(report['failure'])}</div>
<p class="muted">evaluated on {_e(report['evaluation']['source'])} ({report['evaluation']['samples']} samples);
pipeline from {_e(report['pipeline']['source'])}; {report['seconds']} s</p>
<h2>Before and after, step by step</h2>{_table(report)}
{_budget(report)}
<h2>Per-layer error: onnxruntime against MXNet (final model)</h2>{plot}
<h2>The graph</h2>
<p class="muted">{_e(', '.join(f'{n} {m}' for m, n in counts.items()) or 'nothing marked')}</p>
{_legend()}<div class="scroll">{graph_picture(graph, report['marks'])}</div>
<h2>Files</h2><ul>{files}</ul>
</body></html>
"""
