"""`python -m bench.image` rewrites only the "Image" section of BENCHMARKS.md and keeps the rest byte for byte."""

from __future__ import annotations

from pathlib import Path

from bench.image import existing_section, write_section

HEAD = "# Ramp benchmarks\n\nWritten ...\n\n## Scale\n\n| a | b |\n\nverdict\n\n"
TAIL = "<details><summary>Raw results</summary>\n\n```json\n{}\n```\n</details>\n"


def test_the_section_is_added_before_the_raw_results_then_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(HEAD + TAIL)
    write_section(path, "## Image\n\nfirst\n")
    assert path.read_text() == HEAD + "## Image\n\nfirst\n\n" + TAIL
    write_section(path, "## Image\n\nsecond\n")
    assert path.read_text() == HEAD + "## Image\n\nsecond\n\n" + TAIL


def test_a_section_after_the_image_section_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    later = "## Later\n\nkept\n\n"
    path.write_text(HEAD + "## Image\n\nold\n\n" + later + TAIL)
    write_section(path, "## Image\n\nnew\n")
    assert path.read_text() == HEAD + "## Image\n\nnew\n\n" + later + TAIL


def test_the_section_can_be_read_back_and_restored_after_a_full_rewrite(tmp_path: Path) -> None:
    """What bench.run can do to keep the Image section when it rewrites the file from its own sections."""
    path = tmp_path / "BENCHMARKS.md"
    assert existing_section(path) is None
    path.write_text(HEAD + "## Image\n\nmeasured\n\n" + TAIL)
    kept = existing_section(path)
    assert kept == "## Image\n\nmeasured\n"
    path.write_text(HEAD + TAIL)  # a full rewrite by bench.run
    write_section(path, kept)
    assert path.read_text() == HEAD + "## Image\n\nmeasured\n\n" + TAIL
