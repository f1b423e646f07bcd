"""A small synthetic trace root shared by the dashboard tests (complete, running, failed,
unreadable and map-less runs)."""

from __future__ import annotations

import numpy as np

from capture import synthetic as S


def make_root(root) -> dict:
    rng = np.random.default_rng(7)
    layers = S.animatediff_like_layers(n_down=1, heads=2, frames=4, grid=4, latent=8)
    common = dict(layers=layers, steps=4, frames=4, grid=4)
    ids = {
        "a": S.write_run(root, rng, **common, run_id="20260101-000000-aaaaaa",
                         attrs={"model": "m1", "prompt": "a red circle", "seed": 1}),
        "b": S.write_run(root, rng, **common, run_id="20260101-000001-bbbbbb",
                         attrs={"model": "m1", "prompt": "a blue square", "seed": 2,
                                "perturbation": [{"spec": "I@kind=temporal"}]}, perturbed_layers=(1,)),
        "c": S.write_run(root, rng, **common, run_id="20260101-000002-cccccc", maps=False, branches=("cond",),
                         attrs={"model": "m2", "prompt": "a red square", "seed": 1}),
        "running": S.write_run(root, rng, **common, run_id="20260101-000003-dddddd", status="running",
                               attrs={"model": "m1", "prompt": "unfinished"}),
        "failed": S.write_run(root, rng, **common, run_id="20260101-000004-eeeeee", status="failed",
                              attrs={"model": "m1", "prompt": "broken"}),
    }
    bad = root / "runs" / "20260101-000005-ffffff" / "trace.zarr"
    bad.mkdir(parents=True)
    (bad / "zarr.json").write_text("{not json")
    ids["unreadable"] = "20260101-000005-ffffff"
    return ids
