"""Write one benchmark's section of docs/benchmarks.md, leaving everything else as it was.

The page has one ``## `` section per benchmark. A benchmark owns only the text between its
markers, ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->``; a section that is
missing is appended with its heading, and a missing page is created with a short header.
The write is atomic (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PAGE_HEADER = """# Benchmarks

Figures measured by `benchmarks/run.py`; `benchmarks/README.md` says how to run it and what
each benchmark measures. Each section below is written by one benchmark between its
`<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` markers and overwritten on the next
run; text outside the markers is kept.
"""


class MarkerError(ValueError):
    """The page holds a benchmark's markers out of order or more than once."""


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of a benchmark's section."""
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def replace_section(page: str, name: str, title: str, body: str) -> str:
    """The page with the benchmark's section body replaced, or appended when absent.

    Raises:
        MarkerError: a marker appears more than once, or only one of the two appears, or the
            end comes before the start.
    """
    start, end = markers(name)
    starts, ends = page.count(start), page.count(end)
    block = f"{start}\n{body.strip()}\n{end}"
    if starts == 0 and ends == 0:
        lead = page.rstrip("\n") + "\n\n" if page.strip() else ""
        return f"{lead}## {title}\n\n{block}\n"
    if starts != 1 or ends != 1:
        raise MarkerError(
            f"expected one {start!r} and one {end!r}, found {starts} and {ends}; "
            "fix the page by hand"
        )
    if page.index(end) < page.index(start):
        raise MarkerError(f"{end!r} comes before {start!r}; fix the page by hand")
    head, _, rest = page.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{block}{tail}"


def write_section(path: Path, name: str, title: str, body: str) -> None:
    """Write a benchmark's section into the page at ``path``, creating the page if missing."""
    page = path.read_text(encoding="utf-8") if path.exists() else PAGE_HEADER
    updated = replace_section(page, name, title, body)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(updated)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
