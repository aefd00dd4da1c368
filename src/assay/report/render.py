"""Render a `Report`: markdown summary, a self-contained HTML page (PNG plots inlined as base64,
no external URL), PNG files, and the JSON + JSON Schema. `write_report` does all of it."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from assay.report.plots import figure_inputs, report_figures
from assay.report.schema import Report, report_json_schema
from assay.report.tables import Table, all_tables
from assay.fileio import atomic_path, read_json, sha256_json, write_json, write_text


def md_table(t: Table) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"### {t.title}", ""]
    if t.caption:
        lines += [f"_{t.caption}_", ""]
    lines.append("| " + " | ".join(map(esc, t.header)) + " |")
    lines.append("|" + "---|" * len(t.header))
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def _provenance_lines(report: Report) -> list[str]:
    p = report.provenance.model_dump(exclude_none=True)
    return [f"- **{k}**: `{v}`" for k, v in p.items()]


def finding_status(f: Any) -> str:
    """'holds here', 'does not hold here', and, for a verdict resting on SAEs that miss the quality
    bar, 'on SAEs below the quality bar: ...' ('' when there is nothing to say)."""
    verdict = {True: "holds here", False: "does not hold here", None: ""}[f.holds] if f.claim else ""
    below = f"on SAEs below the quality bar: {', '.join(f.below_bar)}" if f.below_bar else ""
    return "; ".join(x for x in (verdict, below) if x)


def _finding_lines(report: Report) -> list[tuple[str, str]]:
    """(lead, text) per finding: the GDM claim it tests and whether it holds, then our sentence."""
    out = []
    for f in report.findings:
        status = finding_status(f)
        lead = " ".join(x for x in (f"GDM: {f.claim}" if f.claim else "", f"({status})" if status else "") if x)
        out.append((lead, f.text))
    return out


def render_markdown(report: Report, figure_files: list[str] | None = None) -> str:
    parts = [f"# {report.title}", ""]
    if report.findings:
        parts += ["## Findings", ""] + [f"- {f'**{lead}** ' if lead else ''}{text}" for lead, text in _finding_lines(report)] + [""]
    extra = [n for n in report.notes if n not in {f.text for f in report.findings}]
    if extra:
        parts += ["## Notes", ""] + [f"- {n}" for n in extra] + [""]
    parts += ["## Results", ""] + [md_table(t) for t in all_tables(report)]
    if figure_files:
        parts += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figure_files] + [""]
    parts += ["## Provenance", ""] + _provenance_lines(report)
    if report.config:
        parts += ["", "```json", json.dumps(report.config, indent=2, default=str), "```"]
    return "\n".join(parts) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
caption{caption-side:bottom;font-size:12px;color:#555;text-align:left;padding-top:4px}
figure{display:inline-block;margin:0 1em 1em 0}img{max-width:100%;border:1px solid #eee}
code,pre{background:#f6f6f6;font-size:12px}pre{padding:.6em;overflow:auto}
"""


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in t.rows)
    cap = f"<caption>{e(t.caption)}</caption>" if t.caption else ""
    return f'<h3>{e(t.title)}</h3>\n<table id="{e(t.id)}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n'


def render_html(report: Report, figures: dict[str, bytes] | None = None) -> str:
    """One self-contained page: no script, no external resources."""
    e = html.escape
    figures = report_figures(report) if figures is None else figures
    imgs = "".join(
        f'<figure><img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{e(name)}</figcaption></figure>\n"
        for name, png in figures.items()
    )
    found = "".join(f"<li>{f'<b>{e(lead)}</b> ' if lead else ''}{e(text)}</li>" for lead, text in _finding_lines(report))
    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes if n not in {f.text for f in report.findings})
    prov = "".join(f"<li><b>{e(k)}</b>: <code>{e(str(v))}</code></li>"
                   for k, v in report.provenance.model_dump(exclude_none=True).items())
    config = e(json.dumps(report.config, indent=2, default=str))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(report.title)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>{e(report.title)}</h1>\n"
        + (f"<h2>Findings</h2><ul>{found}</ul>\n" if found else "")
        + (f"<h2>Notes</h2><ul>{notes}</ul>\n" if notes else "")
        + "<h2>Results</h2>\n" + "".join(_html_table(t) for t in all_tables(report))
        + f"<h2>Figures</h2>\n<div id=\"figures\">{imgs}</div>\n"
        + f"<h2>Provenance</h2><ul>{prov}</ul><pre>{config}</pre>\n</body></html>\n"
    )


FIGURE_INDEX = "figures.json"  # which figures `figures/` holds, and the key of what drew them


def figure_key(report: Report) -> str:
    """What decides a report's figures: the fields they read and the code that draws them."""
    from assay.provenance import code_fingerprint

    return sha256_json({"inputs": figure_inputs(report), "code": code_fingerprint("assay.report.plots", "assay.probes.names")})


def _kept_figures(out: Path, key: str) -> dict[str, bytes] | None:
    """The figures an earlier write of a report with the same `figure_key` left in `out/figures`
    (drawing them again takes seconds and gives the same pictures), or None."""
    try:
        index = read_json(out / "figures" / FIGURE_INDEX)
        if index.get("key") != key:
            return None
        return {name: (out / "figures" / f"{name}.png").read_bytes() for name in index["figures"]}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def write_report(report: Report, out_dir: str | Path, *, formats: tuple[str, ...] = ("json", "md", "html", "png")) -> dict[str, Path]:
    """Write `report.json`, `report.schema.json`, `report.md`, `report.html`, `figures/*.png`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "json" in formats:
        # compact: thousands of rows of curves and histograms; `python -m json.tool` pretty-prints it
        write_text(out / "report.json", report.model_dump_json() + "\n")
        write_json(out / "report.schema.json", report_json_schema())
        written |= {"json": out / "report.json", "schema": out / "report.schema.json"}
    key = figure_key(report) if "png" in formats else None
    kept = _kept_figures(out, key) if key is not None else None
    figures = kept if kept is not None else (report_figures(report) if {"png", "html", "md"} & set(formats) else {})
    files = []
    if "png" in formats:
        if kept is None:
            for name, png in figures.items():
                with atomic_path(out / "figures" / f"{name}.png") as tmp:
                    tmp.write_bytes(png)
            write_json(out / "figures" / FIGURE_INDEX, {"key": key, "figures": list(figures)})
        files = [f"figures/{name}.png" for name in figures]
        written["png"] = out / "figures"
    if "md" in formats:
        write_text(out / "report.md", render_markdown(report, files))
        written["md"] = out / "report.md"
    if "html" in formats:
        write_text(out / "report.html", render_html(report, figures))
        written["html"] = out / "report.html"
    return written
