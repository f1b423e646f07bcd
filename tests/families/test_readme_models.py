"""The README's model table lists every preset and every family (so a new one cannot be left out)."""

from pathlib import Path

from capture.models.families import FAMILIES
from capture.models.presets import PRESETS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
TABLE = README[README.index("### Models"):README.index("### Layer selection")]


def test_every_preset_and_family_is_in_the_model_table():
    missing = [n for n in PRESETS if f"`{n}`" not in TABLE and f"`{n}:" not in TABLE]
    assert not missing, f"presets missing from the README model table: {missing}"
    for cls, fam in FAMILIES.items():
        assert f"`{cls}`" in TABLE, f"{cls} missing from the README model table"
        assert f"| {fam.name} |" in TABLE, f"family {fam.name} missing from the README model table"
    assert "| generic |" in TABLE
    for p in PRESETS.values():
        assert p.family in {f.name for f in FAMILIES.values()} | {"generic"}, p.name
