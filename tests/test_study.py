"""The one-layer I/U study end to end on the tiny model: sweep, effects, report."""

import pandas as pd
import pytest

from capture import cli, effects
from capture.catalog import Catalog
from capture.study import study_spec, write_report
from capture.sweep_exec import execute

pytestmark = pytest.mark.slow


def test_study_runs_and_reports(tmp_path, capsys):
    root, out = tmp_path / "root", tmp_path / "report"
    spec = study_spec("st", "tiny-animatediff", ["a red circle moving left", "a blue square"], (0,),
                      call={"steps": 2, "frames": 4, "height": 32, "width": 32})
    s = execute(spec, root, threads=1)
    assert not s["failed"] and s["measured"] == s["planned"]
    cat = Catalog(root)
    n_layers = cat.query("SELECT count(DISTINCT sweep_layers) AS n FROM runs WHERE sweep_layers IS NOT NULL")["n"][0]
    assert s["planned"] == 2 * (1 + 2 * n_layers)  # per prompt: baseline + every self layer x {I, U}
    path = write_report(cat, "st", out)
    text = path.read_text()
    for section in ("Which layers matter for structure", "temporal consistency", "Does low entropy mean structure"):
        assert section in text
    for fig in ("fig_layers_ssim.png", "fig_hist_ssim.png", "fig_entropy_ssim.png", "fig_layers_flicker.png"):
        assert (out / fig).stat().st_size > 5000 and f"({fig})" in text
    table = pd.read_csv(out / "layer_effects.csv")
    summ = effects.layer_summary(effects.layer_effects(cat, "st"))
    assert len(table) == len(summ) == n_layers * 2 * summ["metric"].nunique()
    ssim = table[table["metric"] == "ssim_mean"]
    assert ssim["effect"].between(-1, 1).all() and ssim["n"].eq(2).all() and ssim["entropy"].between(0, 1).all()
    # the CLI re-renders the same report from the root
    assert cli.main(["study", "--root", str(root), "--name", "st", "--model", "tiny-animatediff", "--report-only",
                     "--out", str(tmp_path / "again")]) == 0
    assert "report:" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "again" / "layer_effects.csv").equals(table)


def test_report_of_an_unknown_sweep_is_a_clear_error(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match="no measured one-layer runs"):
        write_report(Catalog(tmp_path), "nope", tmp_path / "out")
