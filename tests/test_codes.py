"""Code read-out in the product: per-frame counts, agreement, and the run's 'codes readable' line."""

import glob

import numpy as np

from flows.pipeline.actors import code_counts
from flows.pipeline.run_report import codes_line, codes_readable
from flows.reports.html import codes_text
from restoration.codes import decode_codes
from restoration.rng import generator_for
from restoration.synthetic.coded import native_frame

FONTS = tuple(sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf")))


def test_counts_and_agreement_on_a_real_label() -> None:
    f = native_frame(generator_for("test/codes/0"), 10_400_000, "gaussian", FONTS)
    read = decode_codes(f.sharp)
    assert read and set(read) <= set(f.codes)
    blank = np.full_like(f.sharp, 128)
    same = {"codes_in": len(read), "codes_out": len(read), "codes_agree": 1.0}
    assert code_counts(f.sharp, f.sharp) == same
    lost = code_counts(f.sharp, blank)
    assert lost["codes_out"] == 0 and lost["codes_agree"] == 0.0
    assert code_counts(blank, f.sharp)["codes_agree"] == 1.0  # a code gained is not a disagreement
    assert decode_codes(blank[..., 0]) == ()


def test_run_summary_line_and_report_text() -> None:
    rows = [
        {"status": "restored", "codes_in": 1.0, "codes_out": 2.0, "codes_agree": 1.0},
        {"status": "restored", "codes_in": 1.0, "codes_out": 0.0, "codes_agree": 0.0},
        {"status": "quarantined", "codes_in": float("nan"), "codes_out": float("nan")},
    ]
    codes = codes_readable(rows)
    assert codes == {"frames": 2, "before": 2, "after": 2, "frames_lost": 1}
    assert codes_line({"codes": codes}) == "Codes readable: before 2, after 2 (2 frames, lost on 1 frame(s))."
    assert codes_text({"codes": codes}) == "before 2, after 2 (a code lost on 1 frames)"
    assert codes_text({}) == "—" and "no restored frame" in codes_line({"codes": codes_readable([])})
