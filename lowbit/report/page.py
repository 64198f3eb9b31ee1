"""The report page: one self-contained HTML file (inline style, no script, no network) beside
its PNGs, in sections: summary, activation ranges, bits per layer, lowering, size breakdown,
notes. Every number on it comes from the ``Report``; every string is HTML-escaped.
"""

from __future__ import annotations

import collections
import datetime
import html
from pathlib import Path

from lowbit.model_files import model_name
from lowbit.report.data import OUTLIER_FACTOR, Report
from lowbit.report.plots import Plot

__all__ = ["SECTIONS", "render"]

SECTIONS = {"ranges": "Activation ranges", "bits": "Bits per layer", "lowering": "Lowering",
            "sizes": "Size breakdown"}
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-top: .6em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 12.5px; }
td, th { border: 1px solid #ddd; padding: 2px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: .8em 0 1.4em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 12.5px; } .fp { color: #8c8c8c; } .out { color: #c44e52; }
code { background: #f5f5f5; padding: 0 3px; }
"""


def _e(x) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)          # headers: literal HTML
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _figures(plots: list[Plot], section: str) -> str:
    return "".join(f'<figure><img src="{_e(p.file)}" alt="{_e(p.caption)}">'
                   f"<figcaption>{_e(p.caption)}</figcaption></figure>"
                   for p in plots if p.section == section)


def _summary(r: Report) -> str:
    kinds = collections.Counter(x.weight for x in r.linears)
    fb = sum(s.float_bytes for s in r.sizes)
    qb = sum(s.quant_bytes for s in r.sizes)
    measured = [s for s in r.sites if s.lo is not None]
    n_out = sum(len(s.outliers) for s in measured)
    items = [f"{len(r.linears)} linear(s): " + ", ".join(f"{n} {_e(k)}" for k, n in
                                                        kinds.most_common()),
             (f"size {fb / 1e6:.2f} MB float &rarr; {qb / 1e6:.2f} MB quantized "
              f"({fb / max(qb, 1):.2f}x smaller)"),
             (f"{n_out} outlier channel(s) (&gt; {OUTLIER_FACTOR:g}x the median channel) in "
              f"{sum(bool(s.outliers) for s in measured)} of {len(measured)} linear input(s)")]
    if r.lowering is not None and r.lowering.error is None:
        ints = sum(x.kernel != "fp32" for x in r.linears)
        items.append(f"lowering: {ints} of {len(r.linears)} linear(s) on integer kernels "
                     f"({_e(r.lowering.kernel_family or 'no int8 kernels for this target')})")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _ranges(r: Report, plots: list[Plot]) -> str:
    rows = []
    for s in r.sites:
        if s.lo is None:
            rows.append([_e(s.label), "", _e(s.quantizer), "", "", "", f"<i>{_e(s.note)}</i>"])
            continue
        out = ", ".join(f"{c} ({s.absmax[c] / s.median:.1f}x)" for c in s.outliers[:8])
        out += f" and {len(s.outliers) - 8} more" if len(s.outliers) > 8 else ""
        grid = f"[{s.grid[0]:.4g}, {s.grid[1]:.4g}]" if s.grid else ""
        rows.append([_e(s.label), s.lo.size, _e(s.quantizer), grid, f"{s.median:.4g}",
                     f"{s.ratio:.1f}x", f'<span class="out">{_e(out)}</span>'])
    return (f"<p>Per-channel range of each linear's input on the calibration text; a channel "
            f"whose largest |x| exceeds <b>{OUTLIER_FACTOR:g}x</b> the median channel's is an "
            f"outlier (red). The dashed lines are the range a per-tensor quantizer represents: "
            f"outliers stretch it, and every other channel loses resolution.</p>"
            + _figures(plots, "ranges")
            + _table(["input of", "channels", "quantizer", "grid", "median |x|",
                      "largest / median", "outlier channels (x median)"], rows, {1, 4, 5}))


def _bits(r: Report, plots: list[Plot]) -> str:
    rows = [[_e(x.name), f"{x.in_features} &rarr; {x.out_features}", _e(x.weight),
             f"{x.weight_bits:g}", _e(x.activation), x.activation_bits] for x in r.linears]
    return (_figures(plots, "bits")
            + _table(["linear", "K &rarr; N", "weight", "bits", "activation", "bits"], rows,
                     {3, 5}))


def _lowering(r: Report, plots: list[Plot]) -> str:
    if r.lowering is None:
        return f"<p>Not compiled: {_e(r.lowering_note)}.</p>"
    if r.lowering.error is not None:
        return (f"<p>The compile for <code>{_e(r.lowering.target)}</code> failed:</p>"
                f"<pre>{_e(r.lowering.error)}</pre>")
    rows = [[_e(x.name), f"<code>{_e(x.node)}</code>",
             '<span class="fp">fp32</span>' if x.kernel == "fp32" else f"<b>{_e(x.kernel)}</b>",
             _e(x.why or "")] for x in r.linears]
    return (f"<p>Compiled with <code>lowbit.compile</code> for <code>{_e(r.lowering.target)}"
            f"</code> in {r.lowering.seconds:.1f} s (default schedules). Integer kernels: "
            f"{_e(r.lowering.kernel_family or 'none for this target')}.</p>"
            f"<p><code>{_e(r.lowering.summary)}</code></p>" + _figures(plots, "lowering")
            + _table(["linear", "node", "kernel", "why not an integer kernel"], rows))


def _sizes(r: Report, plots: list[Plot]) -> str:
    rows = [[_e(s.component), f"{s.float_bytes / 1e6:.3f}", f"{s.quant_bytes / 1e6:.3f}",
             f"{s.float_bytes / s.quant_bytes:.2f}x" if s.quant_bytes else ""] for s in r.sizes]
    fb, qb = sum(s.float_bytes for s in r.sizes), sum(s.quant_bytes for s in r.sizes)
    rows.append(["<b>total</b>", f"<b>{fb / 1e6:.3f}</b>", f"<b>{qb / 1e6:.3f}</b>",
                 f"<b>{fb / max(qb, 1):.2f}x</b>"])
    return (_figures(plots, "sizes")
            + _table(["component", "float MB", "quantized MB", "smaller by"], rows, {1, 2, 3})
            + "<p>Quantized weights count at their bits, zero points at one byte, scales, "
              "biases and everything else at their dtype.</p>")


def render(r: Report, plots: list[Plot]) -> str:
    """The page for ``r`` whose plots (files beside it) are ``plots``."""
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    meta = _table(["model", "kind", "recipe", "calibration", "lowbit", "written"],
                  [[_e(r.model), _e(r.kind), _e(r.recipe), _e(r.calibration),
                    _e(r.lowbit_version), _e(when)]])
    sections = {"ranges": _ranges(r, plots), "bits": _bits(r, plots),
                "lowering": _lowering(r, plots), "sizes": _sizes(r, plots)}
    body = "".join(f'<section id="{k}"><h2>{_e(SECTIONS[k])}</h2>{v}</section>'
                   for k, v in sections.items())
    notes = "".join(f"<li>{_e(n)}</li>" for n in r.notes)
    title = f"lowbit report: {model_name(Path(r.model))} ({r.recipe})"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{_e(title)}</h1>{meta}<section id=\"summary\"><h2>Summary</h2>"
            f"{_summary(r)}</section>{body}<section id=\"notes\"><h2>Notes</h2><ul>{notes}"
            f"</ul></section></body></html>\n")
