"""`assay report`: render markdown, HTML and PNG figures from a results JSON."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Render reports (markdown, self-contained HTML, PNG) from a results JSON.", no_args_is_help=True)


@app.command()
def render(
    results: Path = typer.Argument(..., help="Results JSON (assay.report.schema.Report)."),
    out: Path = typer.Option(None, help="Output directory; default: beside the JSON."),
    formats: str = typer.Option("md,html,png", help="Comma-separated: json, md, html, png."),
) -> None:
    """Validate RESULTS against the schema and write report.{md,html} and figures/*.png."""
    from assay.report.render import write_report
    from assay.report.schema import load_report

    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = sorted(set(fmts) - {"json", "md", "html", "png"})
    if unknown or not fmts:
        raise typer.BadParameter(f"{', '.join(unknown) or 'none'}: choose from json, md, html, png", param_hint="--formats")
    report = load_report(results)
    written = write_report(report, out or results.parent, formats=fmts)
    for what, path in written.items():
        typer.echo(f"{what}: {path}")


@app.command()
def schema(out: Path = typer.Option(None, help="Write the JSON Schema here instead of stdout.")) -> None:
    """Print the results JSON Schema."""
    import json

    from assay.report.schema import report_json_schema

    text = json.dumps(report_json_schema(), indent=2)
    if out:
        from assay.fileio import write_text

        write_text(out, text + "\n")
    else:
        typer.echo(text)


@app.command()
def demo(out: Path = typer.Argument(Path("runs/report-demo")), seed: int = 0) -> None:
    """A report from synthetic scores: the layout without a model."""
    from assay.report.render import write_report
    from assay.report.synthetic import synthetic_report

    for what, path in write_report(synthetic_report(seed), out).items():
        typer.echo(f"{what}: {path}")
