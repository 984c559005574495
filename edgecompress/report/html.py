"""report.html: what the search did, for a person to see, viewable offline.

Everything is read from the run's report.json (plus the artifact files for their sizes); plots
are matplotlib PNGs embedded as base64 data URIs so the page has no external reference at all.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from edgecompress.errors import MissingBackendError, UserError
from edgecompress.report.assemble import metric_label

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1250px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em;
       margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
tr.chosen td { background: #e6f4ea; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; white-space: pre-wrap;
      word-break: break-all; }
.note { color: #8a5a00; background: #fff6e0; padding: 0.4em 0.7em; border-radius: 4px; }
.sub { color: #666; }
"""


def write_report_html(out_dir: str | Path, *, run_dir: str | Path | None = None) -> Path:
    """Render `out_dir/report.json` into a self-contained `out_dir/report.html`; returns its path.

    Artifact sizes are read from `run_dir` (default `out_dir`), falling back to `out_dir`: a stage
    writing into its staging folder passes the run directory where earlier artifacts already are.
    """
    out_dir = Path(out_dir)
    report = load_report(out_dir)
    if run_dir is None and out_dir.parent.name == ".staging":
        run_dir = out_dir.parent.parent  # the pipeline's <run>/.staging/<stage>/ folder
    roots = [Path(run_dir), out_dir] if run_dir is not None else [out_dir]
    page = render_report_html(report, run_dir=roots[0], extra_roots=roots[1:])
    dst = out_dir / REPORT_HTML
    tmp = dst.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(dst)  # never leave a half-written report that looks finished
    return dst


def load_report(run_dir: Path) -> dict:
    path = run_dir / REPORT_JSON
    if not path.is_file():
        raise UserError(f"{run_dir} has no {REPORT_JSON}", "pass the directory of a finished run")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}", "re-run the verify stage") from exc


def render_report_html(report: dict, *, run_dir: Path, extra_roots: list[Path] = ()) -> str:
    """The whole page as a string (sections in the order a reader asks their questions)."""
    sections = [
        _summary_section(report),
        _probes_section(report),
        _channels_section(report),
        _precisions_section(report),
        _timings_section(report),
        _artifacts_section(report, [run_dir, *extra_roots]),
        _command_section(report),
    ]
    title = f"edgecompress run: {report.get('target', '?')}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{_e(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


# ---------------------------------------------------------------- sections


def _summary_section(report: dict) -> str:
    base, res = report.get("baseline") or {}, report.get("result") or {}
    score = _score_name(report)
    rows = [
        (f"validation {score}", base.get("accuracy"), res.get("accuracy"), _diff),
        (f"test {score}", base.get("test_accuracy"), res.get("test_accuracy"), _diff),
        ("latency (ms)", base.get("latency_ms"), res.get("latency_ms"), _speedup),
        ("FLOPs", base.get("flops"), res.get("flops"), _ratio),
        ("parameters", base.get("params"), res.get("params"), _ratio),
    ]
    body = "".join(f"<tr><td class=l>{_e(name)}</td><td>{_num(b)}</td><td>{_num(r)}</td>"
                   f"<td>{change(b, r)}</td></tr>" for name, b, r, change in rows)
    budget = report.get("latency_budget_ms")
    lines = [f"target <b>{_e(report.get('target'))}</b>, precision <b>{_e(report.get('precision'))}</b>, "
             f"accuracy budget {_e(report.get('max_acc_drop'))} points, latency budget "
             f"{_num(budget) + ' ms' if budget is not None else 'none'}, chosen cr {_num(res.get('cr'))}"]
    lines.append(_pruning_paragraph(report))
    methods = {base.get("latency_method"), res.get("latency_method")}
    if "estimated" in methods:
        lines.append("<p class=note>Latency is <b>estimated</b> from the profile's device figures, "
                     "not measured: no device was reachable. Run the regression test on the "
                     "device to measure it.</p>")
    missed = ((report.get("budget") or {}).get("missed")) or {}
    if missed:
        lines.append("<p class=note><b>Budget missed</b>: " + ", ".join(
            f"{_e(k)} by {_num(v)}" for k, v in missed.items()) + "</p>")
    moved = (report.get("search") or {}).get("moved_from")
    if moved is not None and res.get("cr") is not None:
        lines.append(f"<p class=sub>The search chose cr {_num(moved)}, then moved to cr {_num(res['cr'])}: "
                     f"measured as fast, and more accurate.</p>")
    lines += [f"<p class=note>{_e(n)}</p>" for n in report.get("notes") or []]
    return (f"<section id=summary><h2>Summary</h2><p>{lines[0]}</p>{''.join(lines[1:])}"
            f"<table><tr><th class=l></th><th>original</th><th>compressed</th><th>change</th></tr>"
            f"{body}</table></section>")


def _score_name(report: dict) -> str:
    """What the report's `accuracy` values are: "accuracy (%)" (top-1), or the task's metric ("mAP50-95")."""
    return metric_label(report) or "accuracy (%)"


def _pruning_paragraph(report: dict) -> str:
    """What pruning bought on top of the unpruned model quantized the same way."""
    unpruned, pruning = report.get("unpruned"), report.get("pruning") or {}
    if not unpruned:
        return ""
    if unpruned.get("shipped"):
        return (f"<p class=note><b>Pruning does not pay</b> for this model on this target: the unpruned "
                f"model ships at {_e(unpruned.get('precision'))}.</p>")
    removed = pruning.get("blocks_removed") or []
    what = f"mode {_e(pruning.get('mode'))}" + (f", {len(removed)} residual block(s) removed" if removed else "")
    gain = report.get("pruning_speedup") or {}
    share = report.get("pruning_share") or {}
    return (f"<p><b>{_num(gain.get('ratio'))}x [{_num(gain.get('low'))}, {_num(gain.get('high'))}] over the user's "
            f"fastest plain engine</b>: {_e(unpruned.get('tool'))} {_e(unpruned.get('precision'))} on "
            f"{_e(unpruned.get('runtime'))} at its defaults, {_num(unpruned.get('latency_ms'))} ms "
            f"({_e(unpruned.get('latency_method'))}), validation {_e(metric_label(report) or 'accuracy')} "
            f"{_num(unpruned.get('accuracy'))}{'' if metric_label(report) else ' %'}, "
            f"timed side by side with the engine. Pruning's own share, at equal shape, settings and precision: "
            f"<b>{_num(share.get('ratio'))}x [{_num(share.get('low'))}, {_num(share.get('high'))}]</b> ({what}).</p>"
            + _steps_table(report) + _loading_snippet(report))


def _steps_table(report: dict) -> str:
    """Where the speed came from: each step timed in one session of the protocol, with its interval."""
    steps = report.get("speed_steps") or []
    if not steps:
        return ""
    rows = "".join(
        f"<tr><td class=l>{_e(s['step'])}</td><td class=l>{_e(s['tool'])}</td><td>{_num(s['latency_ms'])} ms</td>"
        f"<td>{_num(s['gain']['ratio'])}x [{_num(s['gain']['low'])}, {_num(s['gain']['high'])}]</td>"
        f"<td>{_num(s['total']['ratio'])}x [{_num(s['total']['low'])}, {_num(s['total']['high'])}]</td>"
        f"<td class=l><code>{_e(json.dumps(s['settings']))}</code></td></tr>" for s in steps)
    return ("<h3>Where the speed came from</h3>" + _img(_steps_figure(steps), "latency per step") +
            "<table><tr><th class=l>step</th><th class=l>engine</th>"
            "<th>latency</th><th>this step</th><th>in all</th><th class=l>runtime settings</th></tr>"
            f"{rows}</table>")


def _steps_figure(steps: list[dict]):
    """Each step's latency as a bar, the speed-up over the plain engine with its interval beside it."""
    fig = _figure(9, 0.6 + 0.55 * len(steps))
    ax = fig.subplots()
    names = [s["step"] for s in steps][::-1]
    ms = [s["latency_ms"] for s in steps][::-1]
    ax.barh(names, ms, color=["#4a7" if i == 0 else "#999" for i in range(len(ms))])
    for y, s in enumerate(steps[::-1]):
        t = s["total"]
        ax.text(s["latency_ms"], y, f"  {t['ratio']:.2f}x [{t['low']:.2f}, {t['high']:.2f}]", va="center")
    ax.set(xlabel="latency (ms), timed side by side", xlim=(0, max(ms) * 1.35))
    return fig


def _loading_snippet(report: dict) -> str:
    """How to load the engine exactly as it was timed (deploy.json, the one loader)."""
    settings = (report.get("deploy") or {}).get("settings")
    engine = report.get("engine", "")
    raw = ""
    if str(engine).endswith(".xml"):
        raw = (f"\n# or with OpenVINO alone:\nimport openvino as ov\ncore = ov.Core()\n"
               f"compiled = core.compile_model(core.read_model('{engine}'), 'CPU', {settings!r})")
    elif str(engine).endswith((".onnx", ".ort")):
        raw = (f"\n# or with ONNX Runtime alone: SessionOptions with {settings!r}\nimport onnxruntime as ort\n"
               f"session = ort.InferenceSession('{engine}', providers=['CPUExecutionProvider'])")
    return ("<h3>How to load this engine</h3><pre>import edgecompress\n"
            "engine = edgecompress.load('RUN_DIR')   # deploy.json: the engine, its runtime and settings\n"
            f"logits = engine(images)                  # NCHW float32, any batch{_e(raw)}</pre>")


def _probes_section(report: dict) -> str:
    probes = report.get("probes") or []
    if not probes:
        return "<section id=probes><h2>Search probes</h2><p>No search probes were recorded.</p></section>"
    img = _img(_probes_figure(report), "search probes")
    rows = "".join(
        f"<tr{' class=chosen' if _is_chosen(p, report) else ''}><td>{i}</td><td>{_e(p.get('mode', 'width'))}</td>"
        f"<td>{_num(p.get('cr'))}</td>"
        f"<td>{_num(p.get('accuracy'))}</td><td>{_num(p.get('latency_ms'))}</td>"
        f"<td>{_num(p.get('flops'))}</td><td>{_num(p.get('params'))}</td>"
        f"<td>{'yes' if p.get('accepted') else 'no'}</td></tr>"
        for i, p in enumerate(probes, 1))
    return (f"<section id=probes><h2>Search probes</h2>"
            f"<p class=sub>Each probe prunes at one cumulative contribution rate (cr), recalibrates "
            f"and measures. Green: within budget; red: rejected; star: chosen; diamond: the shipped "
            f"model after fine-tuning and quantization.</p>{img}"
            f"<table><tr><th>#</th><th>mode</th><th>cr</th><th>val. {_e(_score_name(report))}</th><th>latency (ms)</th>"
            f"<th>FLOPs</th><th>params</th><th>accepted</th></tr>{rows}</table></section>")


def _channels_section(report: dict) -> str:
    layers = report.get("layers") or []
    if not layers:
        return "<section id=channels><h2>Channels per layer</h2><p>No per-layer widths were recorded.</p></section>"
    before = sum(int(l["before"]) for l in layers)
    after = sum(int(l["after"]) for l in layers)
    return (f"<section id=channels><h2>Channels per layer</h2>"
            f"<p class=sub>Output channels of every convolution / linear layer in network order, "
            f"before and after pruning: {before} &rarr; {after} in total "
            f"({100 * after / max(before, 1):.0f} % kept).</p>"
            f"{_img(_channels_figure(layers), 'channels per layer')}</section>")


def _precisions_section(report: dict) -> str:
    rows_in = report.get("precisions") or []
    if not rows_in:
        return (f"<section id=precisions><h2>Precisions tried</h2><p>Only "
                f"{_e(report.get('precision'))} was built.</p></section>")
    rows = "".join(
        f"<tr{' class=chosen' if p.get('chosen') else ''}><td class=l>{_e(p.get('precision'))}</td>"
        f"<td class=l>{_e(p.get('backend'))}</td><td>{_num(p.get('accuracy'))}</td>"
        f"<td>{_num(p.get('latency_ms'))}</td><td class=l>{_float_layers(p.get('float_layers'))}</td>"
        f"<td>{'chosen' if p.get('chosen') else ''}</td></tr>" for p in rows_in)
    return (f"<section id=precisions><h2>Precisions tried</h2><table><tr><th class=l>precision</th>"
            f"<th class=l>backend</th><th>val. {_e(_score_name(report))}</th><th>latency (ms)</th>"
            f"<th class=l>layers kept in float</th><th></th></tr>{rows}</table></section>")


def _timings_section(report: dict) -> str:
    timings = dict(report.get("timings_s") or {})
    total = timings.pop("total", None) or sum(timings.values()) or None
    rows = "".join(f"<tr><td class=l>{_e(k)}</td><td>{_seconds(v)}</td>"
                   f"<td>{f'{100 * v / total:.1f} %' if total else ''}</td></tr>"
                   for k, v in timings.items())
    img = _img(_timings_figure(timings), "stage timings") if timings else ""
    return (f"<section id=timings><h2>Stage timings</h2>{img}<table><tr><th class=l>stage</th>"
            f"<th>time</th><th>share</th></tr>{rows}<tr><td class=l><b>total</b></td>"
            f"<td><b>{_seconds(total)}</b></td><td></td></tr></table></section>")


def _artifacts_section(report: dict, roots: list[Path]) -> str:
    rows, run_dir = [], roots[0]
    for name, rel in (report.get("artifacts") or {}).items():
        found = [root / str(rel) for root in roots if (root / str(rel)).is_file()]
        size = (_size(found[0].stat().st_size) if found else
                "this page" if str(rel) == REPORT_HTML else "missing")  # written after this table
        rows.append(f"<tr><td class=l>{_e(name)}</td><td class=l><code>{_e(rel)}</code></td>"
                    f"<td>{size}</td></tr>")
    return (f"<section id=artifacts><h2>Artifacts</h2><p class=sub>Paths relative to "
            f"<code>{_e(run_dir.resolve())}</code>.</p><table><tr><th class=l>artifact</th>"
            f"<th class=l>file</th><th>size</th></tr>{''.join(rows)}</table></section>")


def _command_section(report: dict) -> str:
    command = report.get("command")
    text = _e(command) if command else "(the run did not record its command)"
    return (f"<section id=command><h2>Reproduce</h2><p class=sub>The exact command of this run:</p>"
            f"<pre>{text}</pre></section>")


# ---------------------------------------------------------------- figures


def _figure(width: float, height: float):
    # Figure() without pyplot: no global backend switch, no GUI, nothing left open (Agg canvas).
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingBackendError("matplotlib", "report") from exc
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _probes_figure(report: dict):
    probes = report["probes"]
    fig = _figure(15, 5.2)
    ax_acc, ax_lat, ax_pareto = fig.subplots(1, 3)
    floor = _accuracy_floor(report)
    budget = report.get("latency_budget_ms")
    lat_label = _latency_label(report)
    _scatter_probes(ax_acc, probes, "cr", "accuracy", report)
    _scatter_probes(ax_lat, probes, "cr", "latency_ms", report)
    _scatter_probes(ax_pareto, probes, "latency_ms", "accuracy", report)
    ax_acc.set(xlabel="cr (cumulative contribution rate)", ylabel=f"validation {_score_name(report)}",
               title="cr vs validation accuracy")
    ax_lat.set(xlabel="cr (cumulative contribution rate)", ylabel=lat_label, title="cr vs latency")
    ax_pareto.set(xlabel=lat_label, ylabel=f"validation {_score_name(report)}", title="accuracy vs latency")
    if floor is not None:
        for ax in (ax_acc, ax_pareto):
            ax.axhline(floor, color="tab:orange", ls="--", lw=1.2, label=f"accuracy floor {floor:.2f} %")
    if budget is not None:
        ax_lat.axhline(budget, color="tab:purple", ls="--", lw=1.2, label=f"latency budget {budget:g} ms")
        ax_pareto.axvline(budget, color="tab:purple", ls="--", lw=1.2, label=f"latency budget {budget:g} ms")
    _mark_original_and_shipped(ax_pareto, report)
    # One shared legend under the plots: per-axes legends covered the points they explain.
    handles = {}
    for ax in (ax_acc, ax_lat, ax_pareto):
        ax.grid(alpha=0.3)
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles),
               fontsize=9, frameon=False)
    return fig


def _scatter_probes(ax, probes: list[dict], xkey: str, ykey: str, report: dict) -> None:
    pts = [p for p in probes if p.get(xkey) is not None and p.get(ykey) is not None]
    for accepted, color, marker, label in ((True, "tab:green", "o", "accepted"),
                                           (False, "tab:red", "x", "rejected")):
        sel = [p for p in pts if bool(p.get("accepted")) == accepted]
        if sel:
            ax.scatter([p[xkey] for p in sel], [p[ykey] for p in sel], c=color, marker=marker,
                       s=40, label=label, zorder=3)
    chosen = [p for p in pts if _is_chosen(p, report)]
    if chosen:
        ax.scatter([chosen[0][xkey]], [chosen[0][ykey]], marker="*", s=320, c="gold",
                   edgecolors="black", label="chosen", zorder=4)


def _mark_original_and_shipped(ax, report: dict) -> None:
    base, res = report.get("baseline") or {}, report.get("result") or {}
    if base.get("latency_ms") is not None and base.get("accuracy") is not None:
        ax.scatter([base["latency_ms"]], [base["accuracy"]], marker="s", s=60, c="grey",
                   label="original", zorder=3)
    if res.get("latency_ms") is not None and res.get("accuracy") is not None:
        ax.scatter([res["latency_ms"]], [res["accuracy"]], marker="D", s=70, c="tab:blue",
                   edgecolors="black", label=f"shipped ({report.get('precision', '')})", zorder=4)


def _channels_figure(layers: list[dict]):
    n = len(layers)
    fig = _figure(max(9.0, min(0.32 * n + 2, 30.0)), 4.8)
    ax = fig.subplots()
    xs = list(range(n))
    ax.bar([x - 0.2 for x in xs], [l["before"] for l in layers], width=0.4, color="#bbbbbb", label="before")
    ax.bar([x + 0.2 for x in xs], [l["after"] for l in layers], width=0.4, color="tab:blue", label="after")
    ax.set_xticks(xs, [l["name"] for l in layers], rotation=90, fontsize=7 if n > 30 else 8)
    ax.set(ylabel="output channels", title="channels per layer (network order)", xlim=(-0.7, n - 0.3))
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return fig


def _timings_figure(timings: dict[str, float]):
    fig = _figure(8, 0.35 * len(timings) + 1.0)
    ax = fig.subplots()
    names = list(timings)[::-1]  # barh draws bottom-up; keep stage order top-down
    ax.barh(names, [timings[k] for k in names], color="tab:blue")
    ax.set(xlabel="seconds", title="time per stage")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


# ---------------------------------------------------------------- helpers


def _accuracy_floor(report: dict) -> float | None:
    floor = (report.get("budget") or {}).get("accuracy_floor")
    if floor is not None:
        return float(floor)
    base_acc = (report.get("baseline") or {}).get("accuracy")
    drop = report.get("max_acc_drop")
    return None if base_acc is None or drop is None else float(base_acc) - float(drop)


def _latency_label(report: dict) -> str:
    methods = {(report.get(k) or {}).get("latency_method") for k in ("baseline", "result")}
    return "latency (ms, estimated)" if "estimated" in methods else "latency (ms)"


def _is_chosen(probe: dict, report: dict) -> bool:
    cr = (report.get("result") or {}).get("cr")
    return cr is not None and probe.get("cr") is not None and abs(probe["cr"] - cr) < 1e-9


def _float_layers(value) -> str:
    if not value:
        return "none"
    if isinstance(value, int):
        return str(value)
    names = [str(v) for v in value]
    shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
    return _e(shown)


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _num(value) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f} M"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 100:
        return f"{int(value):,}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def _diff(before, after) -> str:
    return "&ndash;" if before is None or after is None else f"{after - before:+.2f} points"


def _speedup(before, after) -> str:
    return "&ndash;" if not before or not after else f"{before / after:.2f}&times; faster"


def _ratio(before, after) -> str:
    return "&ndash;" if not before or after is None else f"{100 * after / before:.1f} % of original"


def _seconds(value) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)
