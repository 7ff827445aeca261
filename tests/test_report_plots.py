"""The report's plots: real PNGs, drawn for a search with and without confirmation runs."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_report_analysis import write_confirmed, write_results

from tlsearch import report
from tlsearch.report import plots


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("write", [write_results, write_confirmed], ids=["search only", "with confirm"])
def test_every_plot_is_a_real_png(tmp_path: Path, write: object) -> None:
    folder = write(tmp_path)  # type: ignore[operator]
    rep = report.build_report(report.load_experiment(folder))
    written = plots.write_plots(rep, str(tmp_path / "plots"))
    always = {"compute_to_target", "accuracy_vs_freeze_depth", "accuracy_vs_data_fraction", "pareto", "asha_savings",
              "learning_curves"}
    assert set(written) == (always | {"confirmed"} if rep.confirmed else always)
    for name, file_name in written.items():
        data = (tmp_path / "plots" / file_name).read_bytes()
        width, height = _png_size(data)
        assert width >= 700 and height >= 300 and len(data) > 5000, name
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(written.values())  # no temp files
