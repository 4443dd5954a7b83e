"""The README is a product page whose figures are those of the record, and the documentation's links and
script paths point at what exists (benchmarks/ and docs/results/ are grouped by area; a moved file that is
still named somewhere fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted([README, *(REPO / "docs").rglob("*.md"), *(REPO / "benchmarks").rglob("README.md")])


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    heads = (line.lstrip("#").strip().lower() for line in path.read_text().splitlines() if line.startswith("#"))
    return {re.sub(r"[^\w\- ]", "", h).replace(" ", "-") for h in heads}


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_every_figure_of_the_readme_results_table_is_in_its_record():
    rows = [line for line in README.read_text().splitlines() if line.startswith("| ") and "](docs/results/" in line]
    assert len(rows) >= 8
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        figure, run = cells[2], cells[3]
        record = (REPO / re.search(r"\]\((docs/results/[^)#]+)", row).group(1)).read_text()
        for number in re.findall(r"\d+\.\d+|\d{3,}", re.sub(r"<!--.*?-->", "", figure)):
            assert number in record, f"README figure {number} ({cells[0]}) not in its record"
        for date in re.findall(r"\d{4}-\d\d-\d\d", run):
            assert date in record, f"README date {date} ({cells[0]}) not in its record"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path) if path else doc
        assert target.exists(), f"{doc.relative_to(REPO)}: {link} does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{doc.relative_to(REPO)}: no heading for #{anchor} in {path or 'itself'}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_named_benchmark_scripts_and_results_exist(doc):
    for name in re.findall(r"benchmarks/[\w/.-]+\.(?:py|sh|md|json|png)", doc.read_text()):
        assert (REPO / name).exists(), f"{doc.relative_to(REPO)} names {name}, which does not exist"
