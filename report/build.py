"""Build the report from run outputs: OUT/report.md (figures copied to OUT/figures/) and
OUT/report.pdf (reportlab), one section per problem from `pN_*/report.py:section()`.

    python -m report.build outputs report_out

Sections whose inputs are missing say which command produces them; nothing is invented.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from hw2_utils import output_dir, require_dir, run_cli

# In report order; each has a report.py whose section(runs_dir) writes its part.
PROBLEMS = [
    "p1_ddpm",
    "p2_ddim",
    "p3_textual_inversion",
    "p4_gan",
    "p5_dann",
    "p6_classification",
    "p7_clip",
    "p8_controlnet",
]
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def collect_sections(runs_dir: Path) -> list[str]:
    return [
        importlib.import_module(f"{package}.report").section(runs_dir).strip() + "\n"
        for package in PROBLEMS
    ]


def localise_figures(markdown: str, figures: Path) -> str:
    """Copy every referenced image into `figures/` and point the link there, so the
    Markdown is self-contained."""
    figures.mkdir(exist_ok=True)

    def copy(match: re.Match) -> str:
        src = Path(match.group(2))
        if not src.is_file():
            return f"_(figure missing: {src})_"
        dst = figures / f"{len(list(figures.iterdir())):03d}_{src.name}"
        shutil.copy(src, dst)
        return f"![{match.group(1)}](figures/{dst.name})"

    return IMAGE.sub(copy, markdown)


def render_pdf(markdown: str, base: Path, pdf_path: Path) -> None:
    """Render the Markdown subset the sections use: #-headings, paragraphs, '-' bullets,
    pipe tables, images on their own line, fenced code, `code` and **bold**."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import (
        Image,
        Paragraph,
        Preformatted,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    width = A4[0] - 4 * cm

    def inline(text: str) -> str:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"_(.+?)_(?=\W|$)", r"<i>\1</i>", text)
        return re.sub(r"`([^`]+)`", r'<font face="Courier">\1</font>', text)

    story, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            story.append(Preformatted("\n".join(lines[i + 1 : j]), styles["Code"]))
            i = j + 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") for c in cells):
                    rows.append([Paragraph(inline(c), styles["BodyText"]) for c in cells])
                i += 1
            table = Table(rows, repeatRows=1)
            table.setStyle(
                TableStyle(
                    [
                        ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                        ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
                    ]
                )
            )
            story += [table, Spacer(1, 6)]
            continue
        image = IMAGE.fullmatch(line.strip())
        if image:
            path = base / image.group(2)
            img = Image(str(path))
            # small figures scale up too
            scale = min(width / img.imageWidth, 12 * cm / img.imageHeight)
            img.drawWidth, img.drawHeight = img.imageWidth * scale, img.imageHeight * scale
            story += [img, Spacer(1, 6)]
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 3)
            story.append(Paragraph(inline(line.lstrip("# ")), styles[f"Heading{level}"]))
        elif line.startswith("- "):
            story.append(Paragraph(inline(line[2:]), styles["BodyText"], bulletText="•"))
        elif line.strip():
            story.append(Paragraph(inline(line), styles["BodyText"]))
        i += 1
    SimpleDocTemplate(str(pdf_path), pagesize=A4, title="hw2 report").build(story)


def build(runs_dir: Path, out: Path) -> Path:
    header = [
        "# hw2 report",
        "",
        f"Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node() or 'unknown host'} "
        f"from `{runs_dir}` by `python -m report.build {runs_dir} {out}`. Every number below names the "
        "command that measured it and its hardware.",
        "",
    ]
    with output_dir(out) as tmp:
        markdown = localise_figures(
            "\n".join(header) + "\n" + "\n".join(collect_sections(runs_dir)), tmp / "figures"
        )
        (tmp / "report.md").write_text(markdown)
        render_pdf(markdown, tmp, tmp / "report.pdf")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "runs_dir", help="folder with one sub-folder per problem (p1/, p2/, ...) of run outputs"
    )
    p.add_argument(
        "out",
        help="output folder: its report.md, report.pdf and figures/ are replaced when the build "
        "succeeds; nothing else in it is touched",
    )
    args = p.parse_args(argv)
    out = build(require_dir(args.runs_dir, "runs directory"), Path(args.out))
    print(f"wrote {out / 'report.md'} and {out / 'report.pdf'}")


if __name__ == "__main__":
    run_cli(main)
