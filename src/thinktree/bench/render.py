"""Writing a :class:`~thinktree.bench.report.Report`: Markdown, self-contained HTML, terminal."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from rich.console import Console

from thinktree.bench.report import Report, Table
from thinktree.sanitize import clean, printable
from thinktree.terminal_tables import Column, fitted


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows)
    if table.note:
        lines += ["", f"_{table.note}_"]
    return [*lines, ""]


def markdown(report: Report, folder: Path) -> str:
    """The report as Markdown; images are linked relative to ``folder`` (where it is written)."""
    lines = [f"# {report.title}", ""]
    for paragraph in report.intro:
        lines += [paragraph, ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.text:
            lines += [paragraph, ""]
        for table in section.tables:
            lines += _md_table(table)
        for caption, image in section.images:
            rel = Path(os.path.relpath(image, folder)).as_posix()
            lines += [f"![{caption}]({rel})", ""]
    return clean("\n".join(lines).rstrip() + "\n")  # `cat report.md` must not drive a terminal


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0 2em; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: 0.85em; }
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (
        f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{note}"
    )


def html_page(report: Report) -> str:
    """The report as one HTML file with its PNGs embedded (no files beside it needed)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
    ]
    parts += [f"<p>{html.escape(p)}</p>" for p in report.intro]
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.text]
        parts += [_html_table(t) for t in section.tables]
        for caption, image in section.images:
            data = base64.b64encode(image.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return clean("\n".join(parts))  # nor `cat report.html`


def terminal(report: Report, console: Console) -> None:
    """The report's text and tables in the terminal (plots are named, not drawn); a table
    too wide for it is shown in parts that fit (see :func:`~thinktree.terminal_tables.fitted`).

    Everything in a report (dataset, cell and model names, run folders) is shown as written,
    never read as Rich markup, and with its control characters made visible.
    """
    console.print(f"[bold]{printable(report.title)}[/]", highlight=False)
    for paragraph in report.intro:
        console.print(clean(paragraph), highlight=False, markup=False)
    for section in report.sections:
        console.rule(printable(section.title))
        for paragraph in section.text:
            console.print(clean(paragraph), highlight=False, markup=False)
        for table in section.tables:
            columns = [
                Column(header, "left" if i == 0 else "right")
                for i, header in enumerate(table.headers)
            ]
            note = table.note or None
            for part in fitted(table.title, columns, table.rows, console.width, caption=note):
                console.print(part)
        for caption, image in section.images:
            console.print(clean(f"{caption}: {image}"), highlight=False, markup=False)


def write(report: Report, folder: Path) -> tuple[Path, Path]:
    """Write report.md and report.html into ``folder`` (atomically); returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in (("report.md", markdown(report, folder)), ("report.html", html_page(report))):
        path = folder / name
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        out.append(path)
    return out[0], out[1]
