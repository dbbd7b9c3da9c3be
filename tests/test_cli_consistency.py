"""The commands spell the same thing the same way.

Every command that writes results takes ``--out`` (``remove`` and ``repair`` also keep the
reference's ``--result-dir``), every command that draws takes ``--no-plots`` (``evaluate``
also keeps ``--no-plot``), and ``--device`` takes ``cuda:<i>`` everywhere (``repair``
refused it before).
"""

from __future__ import annotations

import pytest
from helpers import COMMAND_ARGS as COMMANDS

from fastunlearn.cli import build_parser, main
from fastunlearn.harness import HarnessConfig
from fastunlearn.influence.experiment import RepairConfig

WRITERS = ["remove", "repair", "unlearn-features", "forget", "evaluate", "exposure"]
DRAWERS = WRITERS
ON_A_DEVICE = ["remove", "extract", "repair", "forget", "evaluate", "exposure"]

#: the smallest forget run (one tiny method, one seed and oracle, one epoch)
TINY_FORGET = ["forget", "--method", "finetune", "--seeds", "1", "--oracles", "1",
               "--epochs", "1", "--no-cache", "--no-mia", "--no-progress",
               "--set", "finetune.epochs=1"]


def _dest(command: str, flag: str) -> str:
    parser = build_parser()
    args = parser.parse_args([command, *COMMANDS[command], flag, "x"]
                             if flag == "--out" else [command, *COMMANDS[command], flag])
    return vars(args)


@pytest.mark.parametrize("command", WRITERS)
def test_every_writer_takes_out(command):
    args = _dest(command, "--out")
    assert "x" in {str(v) for v in args.values()}


@pytest.mark.parametrize("command", ["remove", "repair"])
def test_result_dir_and_out_are_the_same_option(command):
    parser = build_parser()
    extra = COMMANDS[command]
    a = parser.parse_args([command, *extra, "--result-dir", "here"])
    b = parser.parse_args([command, *extra, "--out", "here"])
    assert str(a.result_dir) == str(b.result_dir) == "here"


@pytest.mark.parametrize("command", DRAWERS)
def test_every_drawer_takes_no_plots(command):
    args = _dest(command, "--no-plots")
    assert True in {v for k, v in args.items() if k.startswith("no_plot")}


def test_evaluate_keeps_no_plot():
    args = build_parser().parse_args(["evaluate", "logits", "--no-plot"])
    assert args.no_plot is True


@pytest.mark.parametrize("command", ON_A_DEVICE)
def test_every_device_flag_parses_an_indexed_gpu(command):
    args = build_parser().parse_args([command, *COMMANDS[command], "--device", "cuda:1"])
    assert args.device == "cuda:1"


def test_repair_names_an_indexed_gpu_it_cannot_see(capsys):
    # cuda:1 is a device spelling the other commands take; on this machine it is not visible
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("a second GPU is visible")
    assert main(["repair", "--device", "cuda:1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'--device'" in err and "cuda:1" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="'device' must be cpu, cuda or cuda:<index>"):
        RepairConfig(device="meta").validate()
    with pytest.raises(TypeError, match="'device' must be a str"):
        RepairConfig(device=0).validate()


def test_harness_config_checks_plots():
    with pytest.raises(TypeError, match="'plots' must be a bool"):
        HarnessConfig(methods=("finetune",), plots="no")
    assert HarnessConfig(methods=("finetune",)).plots is True


def test_forget_no_plots_writes_no_png_and_removes_stale_ones(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY_FORGET, "--out", str(out)]) == 0, capsys.readouterr().err
    assert {"accuracy.png", "time.png"} <= {p.name for p in out.iterdir()}
    assert main([*TINY_FORGET, "--no-plots", "--out", str(out)]) == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert not {n for n in names if n.endswith(".png")}, names
    assert {"results.json", "results.md", "logits"} <= names
    assert ".png" not in capsys.readouterr().out.splitlines()[-1]
