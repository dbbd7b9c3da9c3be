import json
import subprocess
import sys

import torch

import fastunlearn
from fastunlearn.cli import main
from fastunlearn.ops import OP_NAMES


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
    assert info["cuda"] == all("cuda" in b for b in info["ops"].values())
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
