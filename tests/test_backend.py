import json
import subprocess
import sys

import torch

import fastunlearn
from fastunlearn.cli import main
from fastunlearn.ops import CPU_ONLY_OPS, OP_NAMES


def test_op_names_are_every_registered_schema():
    """OP_NAMES lists every op the C++ library defines (the certified ones were missing)."""
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "csrc" / "fastunlearn.cpp").read_text()
    defined = set(re.findall(r'm\.def\(\s*"([a-z_0-9]+)\(', source))
    assert defined == set(OP_NAMES)


def test_backend_reports_every_op_with_a_cpu_kernel():
    info = fastunlearn.backend()
    assert info["compiled"], info["load_error"]
    assert info["cpu"]
    assert set(info["ops"]) == set(OP_NAMES)
    for name, backends in info["ops"].items():
        assert "cpu" in backends, name
        assert hasattr(torch.ops.fastunlearn, name)
    assert info["torch"] == torch.__version__
    assert info["devices"][0]["type"] == "cpu"
    if torch.cuda.is_available():
        assert info["cuda"], "a GPU is visible but the CUDA kernels were not compiled"


def test_backend_cuda_flag_matches_registered_kernels():
    info = fastunlearn.backend()
    assert info["cuda"] == all("cuda" in b for name, b in info["ops"].items()
                               if name not in CPU_ONLY_OPS)
    assert set(CPU_ONLY_OPS) <= set(OP_NAMES)
    if info["cuda"]:
        assert info["cuda_arch_list"]


def test_info_command_prints_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CPU kernels  yes" in out
    for name in OP_NAMES:
        assert name in out


def test_info_command_json_is_the_backend_dict(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ops"] == fastunlearn.backend()["ops"]


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "fastunlearn", "info"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "fastunlearn" in res.stdout


def test_backend_and_info_report_the_kernel_settings(monkeypatch, capsys):
    """The environment variables that choose kernels are part of what ``backend()`` (and so
    every benchmark's metadata) and ``fastunlearn info`` report, with their defaults."""
    from fastunlearn._extension import KERNEL_SETTINGS

    for name in KERNEL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert fastunlearn.backend()["settings"] == {
        "FASTUNLEARN_FIXED_STEP": "auto", "FASTUNLEARN_CERTIFIED_FUSED": "1",
        "FASTUNLEARN_GLM_HVP": "gemm"}
    monkeypatch.setenv("FASTUNLEARN_GLM_HVP", "onepass")
    assert fastunlearn.backend()["settings"]["FASTUNLEARN_GLM_HVP"] == "onepass"
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "kernel settings (environment):" in out
    assert any(line.split() == ["FASTUNLEARN_GLM_HVP", "onepass"] for line in out.splitlines())
