"""The exposure figure and the scored log-perplexities it is drawn from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastunlearn.cli import main
from fastunlearn.exposure import (
    CharLM,
    CharVocab,
    ExposureMeasurement,
    SkewNormalFit,
    measure_exposure,
    plot_exposure,
)

PREFIX = "my number is "


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    vocab = CharVocab("".join(sorted(set(PREFIX + "0123456789"))))
    model = CharLM(len(vocab.chars), embed_dim=8, hidden=16).eval()
    return measure_exposure(model, vocab, PREFIX, ["042", "917"])


def test_measurements_keep_the_scores_they_were_ranked_against(measured):
    canary, control = measured
    for m in measured:
        assert m.others is not None and m.others.shape == (m.n_scored,)
        # the rank is recomputed from the kept scores
        assert m.rank == 1 + int(np.sum(m.others <= m.log_perplexity))
    # the whole space (1000 secrets) less the secret itself
    assert canary.n_scored == control.n_scored == 999
    # 'others' stays out of the JSON and out of comparisons
    assert "others" not in canary.to_dict()
    json.dumps(canary.to_dict(), allow_nan=False)


def test_plot_writes_a_png(measured, tmp_path):
    out = plot_exposure(measured, tmp_path / "sub" / "exposure.png")
    assert out == tmp_path / "sub" / "exposure.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    # one measurement alone, custom labels
    plot_exposure(measured[0], tmp_path / "one.png", labels=["inserted"])
    assert (tmp_path / "one.png").stat().st_size > 10_000


def test_plot_of_a_point_mass(tmp_path):
    # every other secret scored alike: no curve to draw, the histogram and the line remain
    m = ExposureMeasurement("12", 3.0, 1, 6.6, 6.6, 6.64, 100, 99, True,
                            SkewNormalFit(0.0, 5.0, 0.0, 99), others=np.full(99, 5.0))
    plot_exposure(m, tmp_path / "flat.png")
    assert (tmp_path / "flat.png").stat().st_size > 5_000


def test_plot_refuses_bad_input(measured, tmp_path):
    bare = ExposureMeasurement("12", 3.0, 1, 6.6, 6.6, 6.64, 100, 99, True,
                               SkewNormalFit(0.0, 5.0, 1.0, 99))
    with pytest.raises(ValueError, match="'others' is None"):
        plot_exposure(bare, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'measurements'"):
        plot_exposure([], tmp_path / "x.png")
    with pytest.raises(TypeError, match="ExposureMeasurement"):
        plot_exposure([measured[0], "canary"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="'labels' must have 2"):
        plot_exposure(measured, tmp_path / "x.png", labels=["a"])
    with pytest.raises(ValueError, match="'bins'"):
        plot_exposure(measured, tmp_path / "x.png", bins=0)
    assert not (tmp_path / "x.png").exists()


def test_cli_writes_the_figure_beside_the_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["exposure", "--secret-length", "2", "--n-sentences", "40", "--steps", "5",
                 "--hidden", "16", "--embed-dim", "8", "--out", str(out)]) == 0
    assert (out / "exposure.png").read_bytes()[:4] == b"\x89PNG"
    assert "![exposure](exposure.png)" in (out / "exposure.md").read_text()
    payload = json.loads((out / "exposure.json").read_text())
    assert "others" not in payload["canary"]
    assert "exposure.png" in capsys.readouterr().out
