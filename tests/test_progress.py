"""Progress output: tqdm on a terminal, whole lines in a log (no carriage-return walls of text)."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
from tqdm import tqdm

from autosam.utils.progress import LineProgress, progress_bar, progress_mode


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_gets_tqdm_and_a_log_gets_lines(monkeypatch):
    monkeypatch.delenv("AUTOSAM_PROGRESS", raising=False)
    assert progress_mode(_Tty()) == "bar"
    assert progress_mode(io.StringIO()) == "lines"
    assert isinstance(progress_bar(total=3, file=_Tty()), tqdm)
    assert isinstance(progress_bar(total=3, file=io.StringIO()), LineProgress)
    monkeypatch.setenv("AUTOSAM_PROGRESS", "lines")
    assert isinstance(progress_bar(total=3, file=_Tty()), LineProgress)
    monkeypatch.setenv("AUTOSAM_PROGRESS", "off")
    out = io.StringIO()
    with progress_bar(total=3, unit="case", file=out) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_one_line_per_case_and_none_for_transient_bars(monkeypatch):
    monkeypatch.delenv("AUTOSAM_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress_bar(total=4, desc="validation", unit="case", file=out)
    for case in ["a", "b", "c", "d"]:
        bar.set_postfix_str(case)
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("validation: 4/4 case") and lines[-1].endswith("d")
    inner = io.StringIO()
    with progress_bar(total=250, desc="epoch 1/5", unit="it", leave=False, file=inner) as it_bar:
        for _ in range(250):
            it_bar.update(1)
    assert inner.getvalue() == ""
    assert "\r" not in out.getvalue()


def test_long_bars_write_at_most_one_line_per_five_percent(monkeypatch):
    monkeypatch.delenv("AUTOSAM_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress_bar(total=1000, desc="patches", unit="patch", file=out)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 21
    assert lines[-1].startswith("patches: 1000/1000")
    assert list(progress_bar(range(5), file=io.StringIO())) == [0, 1, 2, 3, 4]


def test_a_command_writing_to_a_log_has_no_carriage_returns(tmp_path):
    """A real command with its stderr in a file (not a terminal), as under nohup or CI."""
    from autosam.io.image import ImageGeometry, write_image

    geometry = ImageGeometry(spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                             shape=(4, 8, 8))
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for i in range(3):
        a = np.zeros(geometry.shape, np.uint8)
        a[1:3, 2:6, 2:6] = 1
        write_image(ref / f"c{i}.nii.gz", a, geometry)
        write_image(pred / f"c{i}.nii.gz", a, geometry)
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-c", "import sys; from autosam.cli.evaluate import main_simple; "
                        "sys.exit(main_simple(sys.argv[1:]))", str(ref), str(pred), "-l", "1"],
                       stdout=fh, stderr=fh, check=False, timeout=300)
    text = log.read_text()
    assert "evaluating: 3/3 case" in text, text[-500:]
    assert "\r" not in text, text[-500:]
    assert max(len(line) for line in text.splitlines()) < 300
