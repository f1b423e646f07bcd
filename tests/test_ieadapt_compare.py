"""The IE-Adapt comparison: layer sets per method, paired differences against a hand computation,
and the command end to end on the tiny model (report and CSVs written)."""

import pandas as pd
import pytest

from ieadapt.compare import paired_difference, summary


def test_paired_difference_matches_hand_computation():
    df = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "prompt": ["p", "q", "r"] * 2, "seed": [0] * 6,
                       "m": [1.0, 0.5, 0.0, 0.0, 0.5, 0.5]})
    mean, lo, hi = paired_difference(df, "a", "b", "m", n_boot=500)
    assert mean == pytest.approx((1.0 + 0.0 - 0.5) / 3)
    assert -0.5 <= lo <= mean <= hi <= 1.0


def test_summary_means_per_method():
    df = pd.DataFrame({"method": ["cfg", "cfg", "pag", "pag"], "temporal_flicker": [0.9, 0.7, 0.8, 0.6],
                       "seconds": [1.0, 3.0, 2.0, 2.0], "layers": [0, 0, 2, 2]})
    s = summary(df, {"cfg": 5.0, "pag": 6.0, "real": 1.0})
    assert list(s.index) == ["cfg", "pag"] and list(s["videos"]) == [2, 2]
    assert s.loc["cfg", "temporal_flicker"] == pytest.approx(0.8) and s.loc["pag", "frechet"] == 6.0


def test_command_end_to_end(tmp_path):
    from capture.cli import main
    from capture.store import open_run

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving left\n")
    out = tmp_path / "report"
    assert main(["compare", "--model", "tiny-animatediff", "--root", str(tmp_path / "r"), "--prompts", str(prompts),
                 "--seed", "0", "--num-steps", "2", "--frames", "8", "--height", "64", "--width", "64",
                 "--out", str(out), "-q"]) == 0
    text = (out / "README.md").read_text()
    for m in ("| cfg |", "| pag |", "| ie-high |", "| ie-low |", "| ie-random |", "| ie-temp-high |"):
        assert m in text
    videos = pd.read_csv(out / "videos.csv")
    assert len(videos) == 6 and set(videos.loc[videos["method"] != "cfg", "extra_calls"]) <= {0, 2}
    assert (videos.loc[videos["method"].isin(["pag", "ie-high", "ie-low", "ie-random"]), "extra_calls"] == 2).all()
    # layer sets: high and low disjoint and of equal size per kind; random has the same count per kind
    ds = {m: open_run(tmp_path / "r" / "runs" / r).attrs["ieadapt"]["layers"]
          for m, r in zip(videos["method"], videos["run"])}
    kinds = {n: ("temporal" if "motion_modules" in n else "spatial") for n in ds["ie-high"] + ds["ie-low"]}
    assert not set(ds["ie-high"]) & set(ds["ie-low"])
    for k in ("spatial", "temporal"):
        count = lambda names: sum(1 for n in names if ("motion_modules" in n) == (k == "temporal"))  # noqa: E731
        assert count(ds["ie-high"]) == count(ds["ie-low"]) == count(ds["ie-random"]) > 0
    assert ds["pag"] == ["mid_block.attentions.0.transformer_blocks.0.attn1",
                         "mid_block.motion_modules.0.transformer_blocks.0.attn1"]
    assert len(kinds) == len(ds["ie-high"]) + len(ds["ie-low"])
