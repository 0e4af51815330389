"""Render a report to one self-contained HTML page and to Markdown.

The HTML embeds every figure as a base64 PNG and its style sheet inline, and loads nothing else, so
the single file opens offline, from a mail attachment or a cluster's scratch space.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape

from mitosis_cli.report.summary import SummaryTable


@dataclass(frozen=True)
class RenderedFigure:
    name: str  # file stem in figures/
    section: str
    title: str
    caption: str
    png: bytes
    display_width: int  # CSS pixels: the size the figure is shown at before the page narrows it
    display_height: int


@dataclass
class ReportDocument:
    title: str
    version: str
    figures: list[RenderedFigure]
    tables: list[SummaryTable]
    inputs: list[tuple[str, str, str, int]]  # path, kind, sha256, rows
    notes: list[str] = field(default_factory=list)
    intros: dict[str, str] = field(default_factory=dict)  # section -> what its figures show, said once

    def sections(self) -> list[tuple[str, list[RenderedFigure]]]:
        order: list[str] = []
        for figure in self.figures:
            if figure.section not in order:
                order.append(figure.section)
        return [(s, [f for f in self.figures if f.section == s]) for s in order]


# Readable at any window width: text column capped, images scale down, wide tables scroll inside
# their own box instead of widening the page, long paths wrap.
_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; padding: 1.2rem; max-width: 64rem; font: 15px/1.5 system-ui, -apple-system, "Segoe UI",
       "DejaVu Sans", sans-serif; color: #1a1a1a; background: #fff; }
p, li, figcaption, code { overflow-wrap: anywhere; }
h1 { font-size: 1.5rem; margin: 0 0 .3rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta, figcaption, .note { color: #555; font-size: .88rem; }
figure { margin: 1rem 0 1.6rem; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { margin-top: .4rem; }
figcaption b { color: #1a1a1a; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .85rem; margin: .3rem 0; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font-size: .82rem; }
ul.notes { padding-left: 1.2rem; }
nav a { margin-right: .8rem; }
"""


def _is_number(text: str) -> bool:
    try:
        float(text.split(" ")[0])
    except ValueError:
        return False
    return True


def _html_table(table: SummaryTable) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{escape(c)}</td>' if _is_number(c) else f"<td>{escape(c)}</td>" for c in row) + "</tr>"
        for row in table.rows
    )
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return (f'<h3>{escape(table.title)}</h3><div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>{note}")


def _anchor(section: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in section.lower()).strip("-")


def render_html(doc: ReportDocument) -> str:
    """The whole report as one HTML page with the figures embedded."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(doc.title)}</h1>",
        f'<p class="meta">mitosis {escape(doc.version)} · {len(doc.figures)} figures from {len(doc.inputs)} tables · '
        "each figure is also in <code>figures/</code> as PNG and SVG</p>",
    ]
    sections = doc.sections()
    if sections:
        parts.append("<nav>" + "".join(f'<a href="#{_anchor(s)}">{escape(s)}</a>' for s, _ in sections) + "</nav>")
    if doc.notes:
        parts.append('<ul class="notes note">' + "".join(f"<li>{escape(n)}</li>" for n in doc.notes) + "</ul>")
    if doc.tables:
        parts.append('<h2 id="summary">Summary</h2>' + "".join(_html_table(t) for t in doc.tables))
    for section, figures in sections:
        parts.append(f'<h2 id="{_anchor(section)}">{escape(section)}</h2>')
        if section in doc.intros:
            parts.append(f'<p class="note">{escape(doc.intros[section])}</p>')
        for figure in figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(
                f'<figure id="{escape(figure.name)}"><img src="data:image/png;base64,{data}" alt="{escape(figure.title)}" '
                f'width="{figure.display_width}" height="{figure.display_height}">'
                f"<figcaption><b>{escape(figure.title)}.</b> {escape(figure.caption)} "
                f'<a href="figures/{escape(figure.name)}.svg">SVG</a> · <a href="figures/{escape(figure.name)}.png">PNG</a>'
                "</figcaption></figure>"
            )
    rows = "".join(
        f"<tr><td><code>{escape(path)}</code></td><td>{escape(kind)}</td><td class=\"num\">{rows}</td>"
        f"<td><code>{escape(sha[:12])}</code></td></tr>"
        for path, kind, sha, rows in doc.inputs
    )
    parts.append('<h2 id="inputs">Inputs</h2><div class="scroll"><table><thead><tr><th>table</th><th>kind</th><th>rows</th>'
                 f"<th>sha256</th></tr></thead><tbody>{rows}</tbody></table></div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(table: SummaryTable) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(map(_md_cell, table.headers)) + " |",
             "|" + "|".join("---" for _ in table.headers) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines)


def render_markdown(doc: ReportDocument) -> str:
    """The headline numbers and a list of the figures (linked), for a terminal, a wiki or a commit message."""
    lines = [f"# {doc.title}", "", f"mitosis {doc.version}; {len(doc.figures)} figures from {len(doc.inputs)} tables.", ""]
    if doc.notes:
        lines += [f"- {n}" for n in doc.notes] + [""]
    for table in doc.tables:
        lines += [_md_table(table), ""]
    if doc.figures:
        lines += ["## Figures", ""]
        for section, figures in doc.sections():
            lines += [f"### {section}", ""] + ([doc.intros[section], ""] if section in doc.intros else [])
            lines += [f"- [{f.title}](figures/{f.name}.png) ([SVG](figures/{f.name}.svg)): {f.caption}" for f in figures]
            lines.append("")
    lines += ["## Inputs", "", "| table | kind | rows | sha256 |", "|---|---|---|---|"]
    lines += [f"| `{_md_cell(path)}` | {kind} | {rows} | `{sha[:12]}` |" for path, kind, sha, rows in doc.inputs]
    return "\n".join(lines) + "\n"
