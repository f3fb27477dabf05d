"""What the instructor reads after grading: flags on each feedback page, and a summary of the cohort."""
from __future__ import annotations

import base64
import collections
import html
import io
import json
import re
from pathlib import Path

import jinja2
from traitlets.config import LoggingConfigurable

from autograder import integrity

SAFE_TAGS = {"a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em", "h1", "h2",
             "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub",
             "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul"}
SAFE_ATTRIBUTES = {"*": ["class", "title"], "a": ["href"], "img": ["src", "alt", "width", "height"],
                   "td": ["colspan", "rowspan"], "th": ["colspan", "rowspan"]}


def clean_html(element) -> str:
    """The learner's HTML (markdown rendered, or an HTML output) with only harmless tags and attributes left:
    no script, style, form, iframe or event handler; links and pictures by http(s) or an embedded picture."""
    import bleach

    text = element.decode() if isinstance(element, bytes) else str(element)
    text = re.sub(r"<(script|style)\b.*?</\1\s*>", "", text, flags=re.S | re.I)
    return bleach.clean(text, tags=SAFE_TAGS, attributes=SAFE_ATTRIBUTES, protocols={"http", "https", "mailto", "data"},
                        strip=True)


@jinja2.pass_context
class CleanMarkdown(LoggingConfigurable):
    """The `markdown2html` filter of every HTML exporter (nbconvert makes one per exporter, its `parent`): the
    exporter's own, then `clean_html`. nbgrader's feedback and formgrade templates render markdown without
    nbconvert's `sanitize_html`, which cleans only the outputs, so the feedback page and the formgrader (which
    exports with a plain HTMLExporter) would show a learner's script and style as written. A picture whose
    attachment is missing becomes a note instead of costing the learner the whole page."""

    def __call__(self, context, source: str) -> str:
        attached = context.get("cell", {}).get("attachments") or {}
        source = re.sub(r"!\[([^\]]*)\]\(attachment:([^)]*)\)",
                        lambda m: m.group(0) if m.group(2) in attached else f"[missing picture: {m.group(1)}]", source)
        return clean_html(self.parent.markdown2html(context, source))


BANNER_STYLE = ("border:2px solid #c0392b;background:#fdecea;padding:0.6em 1em;margin:1em 0;"
                "font-family:sans-serif")


def flag_feedback(course: Path, chapter: str, flags: dict[str, list[str]]) -> None:
    """Put a box listing the submission's flags at the top of each feedback page that has any."""
    for student, found in flags.items():
        page = course / "feedback" / student / chapter / f"{chapter}.html"
        if not found or not page.exists():
            continue
        text = page.read_text(encoding="utf-8")
        if 'id="vitlab-flags"' in text:
            text = re.sub(r'<div id="vitlab-flags".*?</div>\n', "", text, flags=re.S)
        items = "".join(f"<li>{html.escape(integrity.describe(flag))}</li>" for flag in found)
        box = (f'<div id="vitlab-flags" style="{BANNER_STYLE}"><b>The grader noted:</b><ul>{items}</ul>'
               "Ask your instructor if you think this is wrong.</div>\n")
        page.write_text(re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + "\n" + box, text, count=1),
                        encoding="utf-8")


def failure_messages(course: Path) -> collections.Counter:
    """How often each first line of an error appears in the graded cells of the autograded notebooks."""
    counts: collections.Counter = collections.Counter()
    for path in sorted((course / "autograded").glob("*/*/*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if not cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
                continue
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    first = (output.get("evalue") or output.get("ename", "")).strip().splitlines()
                    message = re.sub(r"\x1b\[[0-9;]*m", "", first[0] if first else output.get("ename", ""))
                    counts[f"{cell['metadata']['nbgrader']['grade_id']}: {message[:160]}"] += 1
    return counts


def summary(course: Path, header: list[str], rows: list[list[str]]) -> Path:
    """summary.html: per-exercise score distributions (a plot) and the most common failure messages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = header[2:-3]
    fractions: dict[str, list[float]] = {}
    maxima = points_of(course)
    for row in rows:
        for cell, value in zip(cells, row[2:-3]):
            if value != "" and maxima.get(cell):
                fractions.setdefault(cell, []).append(float(value) / maxima[cell])
    shown = [c for c in cells if c in fractions]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(shown) + 2), 4))
    if shown:
        means = [sum(fractions[c]) / len(fractions[c]) for c in shown]
        ax.bar(range(len(shown)), means, color=["#c0392b" if m < 0.5 else "#2e86c1" for m in means])
        for i, c in enumerate(shown):
            ax.scatter([i] * len(fractions[c]), fractions[c], s=8, color="black", alpha=0.4, zorder=3)
        ax.set_xticks(range(len(shown)), shown, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of points")
    ax.set_title(f"Score per exercise ({len(rows)} submissions; red: cohort mean under half)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    fig.savefig(course / "summary.png", dpi=110)
    plt.close(fig)
    failures = failure_messages(course).most_common(15)
    flags = collections.Counter(f.split(":")[0] for row in rows for f in row[-1].split())
    lines = [
        "<html><head><meta charset='utf-8'><title>Grading summary</title></head>"
        "<body style='font-family:sans-serif;max-width:60em;margin:auto'>",
        f"<h1>Grading summary</h1><p>{len(rows)} submissions, "
        f"{len({r[0] for r in rows})} students, chapters {', '.join(sorted({r[1] for r in rows}))}.</p>",
        f"<img alt='score per exercise' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>",
        "<h2>Most common failure messages</h2><table border=1 cellpadding=4><tr><th>count</th><th>graded cell: message</th></tr>",
        *(f"<tr><td>{n}</td><td>{html.escape(m)}</td></tr>" for m, n in failures),
        "</table><h2>Flags</h2><ul>",
        *(f"<li>{html.escape(kind)}: {n} submission{'s' * (n != 1)}</li>" for kind, n in flags.most_common()),
        "</ul></body></html>",
    ]
    path = course / "summary.html"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def points_of(course: Path) -> dict[str, float]:
    """Points of every graded cell of the chapters in the grading folder."""
    found = {}
    for path in (course / "solutions").glob("*/*.ipynb"):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade"):
                found[meta["grade_id"]] = float(meta.get("points", 0))
    return found
