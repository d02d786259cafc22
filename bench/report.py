"""The results: a table for the terminal and latest.md, and the full JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from bench.figures import Figure

HEADERS = ("figure", "dbguard", "baseline (same run)", "ratio / excess", "target", "met")


def _met(figure: Figure) -> str:
    if figure.data.get("skipped") or figure.data.get("error"):
        return "not run"
    if figure.met is None:
        return "-"
    return "yes" if figure.met else "**NO**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(figures: list[Figure]) -> str:
    """A Markdown table: readable as it is in a terminal, rendered on a forge."""
    rows = [(f.name, f.value, f.baseline, f.ratio, f.target, _met(f)) for f in figures]
    widths = [max(len(_cell(row[i])) for row in [HEADERS, *rows]) for i in range(len(HEADERS))]
    lines = [
        "| " + " | ".join(_cell(h).ljust(w) for h, w in zip(HEADERS, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        cells = [_cell(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(figures: list[Figure], extra: list[str]) -> list[str]:
    found = [f"{f.name}: {f.note}" for f in figures if f.note]
    return found + extra


def summary(figures: list[Figure]) -> str:
    judged = [f for f in figures if f.met is not None]
    missed = [f.name for f in judged if not f.met]
    not_run = [f.name for f in figures if f.data.get("skipped") or f.data.get("error")]
    text = f"{len(judged) - len(missed)} of {len(judged)} targets met"
    if missed:
        text += "; missed: " + "; ".join(missed)
    if not_run:
        text += "; not run: " + "; ".join(not_run)
    return text


def markdown(meta: dict[str, Any], figures: list[Figure], extra_notes: list[str]) -> str:
    lines = [
        f"# dbguard benchmark: {meta['mode']} run, {meta['started']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
        f"{meta['machine']['memory']}, load average before {meta['load_before']}, "
        f"after {meta['load_after']}  ",
        f"dbguard {meta['dbguard']['version']} at {meta['dbguard']['commit']}"
        f"{' (uncommitted changes)' if meta['dbguard']['dirty'] else ''}; "
        f"shim interpreter {meta['shim_interpreter']}  ",
        f"Page cache: {meta['page_cache']}  ",
        "1-minute load average before and after each figure (this run's own work included): "
        + ", ".join(f"{k} {v}" for k, v in meta.get("load_by_figure", {}).items())
        + "  ",
        f"Duration: {meta['duration_s']:.0f} s",
        "",
        table(figures),
        "",
        f"**{summary(figures)}**",
        "",
        "## Datasets",
        "",
    ]
    for item in meta.get("datasets", []):
        built = (
            "reused (--keep-data)"
            if item["build_seconds"] is None
            else f"built in {item['build_seconds']:.1f} s"
        )
        lines.append(
            f"- `{item['key']}`: {item['description']}, {item['size'] / 1e6:.1f} MB "
            f"({item['name']}), {built}"
        )
    all_notes = notes(figures, extra_notes)
    if all_notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in all_notes]
    lines += ["", "## Tools", ""] + [f"- {k}: {v}" for k, v in meta["tools"].items()]
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write(
    folder: Path, stamp: str, meta: dict[str, Any], figures: list[Figure], extra_notes: list[str]
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "meta": meta,
        "summary": summary(figures),
        "figures": [dataclasses.asdict(f) for f in figures],
        "notes": notes(figures, extra_notes),
    }
    json_path = folder / f"{stamp}.json"
    json_path.write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    md_path = folder / "latest.md"
    md_path.write_text(markdown(meta, figures, extra_notes))
    return json_path, md_path
