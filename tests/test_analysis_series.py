"""Longitudinal series: grouping by entities, natural session order, consecutive pairs, names."""
from __future__ import annotations

from bidsapp.analysis.series import SessionImage, consecutive_pairs, natural_key, pair_name, series


def _im(ses, suffix="T2w", acq="sag", sub="01", task="lesion_ms", run=None):
    ent = {"sub": sub, "suffix": suffix}
    if ses:
        ent["ses"] = ses
    if acq:
        ent["acq"] = acq
    if run:
        ent["run"] = run
    return SessionImage(ent, task, f"{sub}/{ses}/{suffix}")


def test_natural_order():
    labels = ["M12", "M2", "M0", "M6", "baseline", "20240101", "20231231"]
    assert sorted(labels, key=natural_key) == ["20231231", "20240101", "baseline", "M0", "M2", "M6", "M12"]
    assert natural_key("01") < natural_key("2")


def test_series_and_pairs():
    images = [_im("M12"), _im("M0"), _im("M6"),                       # one series of three sessions
              _im("M0", suffix="UNIT1", acq=None), _im("M12", suffix="UNIT1", acq=None),
              _im("M0", acq="ax"),                                    # a single session: no series
              _im(None), _im("M0", sub="02"), _im("M12", sub="02", task="t2"),  # other task: no pair
              _im("M0", run="1"), _im("M12", run="2")]                # different runs: different series
    found = series(images)
    assert [[im.session for im in s] for s in found] == [["M0", "M6", "M12"], ["M0", "M12"]]
    pairs = consecutive_pairs(images)
    assert [(a.session, b.session, b.entities["suffix"]) for a, b in pairs] == [
        ("M0", "M6", "T2w"), ("M6", "M12", "T2w"), ("M0", "M12", "UNIT1")]


def test_pair_name_is_unique_per_series_and_pair():
    a, b = _im("M0"), _im("M12")
    assert pair_name(a, b) == "sub-01_ses-M0toM12_acq-sag_desc-lesionms_T2w"
    names = {pair_name(x, y) for x, y in consecutive_pairs([_im("M0"), _im("M6"), _im("M12"),
                                                              _im("M0", acq="ax"), _im("M6", acq="ax")])}
    assert len(names) == 3
