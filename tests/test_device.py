"""The shared device parser every experiment and command uses."""

import pytest
import torch

from fastunlearn._device import parse_device
from fastunlearn.cli import main


def test_cpu_forms_parse():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["tpu", "meta", "mps", "cuda:x", ""])
def test_other_devices_are_refused_naming_the_argument(spec):
    with pytest.raises(ValueError, match=r"^'out_device' must be cpu, cuda or cuda:<index>"):
        parse_device(spec, argument="out_device")


@pytest.mark.parametrize("spec", [3.5, None, True, [0], b"cpu"])
def test_values_of_other_types_are_type_errors_naming_the_argument(spec):
    with pytest.raises(TypeError, match=r"^'out_device' must be a device string"):
        parse_device(spec, argument="out_device")


def test_an_index_is_a_cuda_device():
    import numpy as np

    if torch.cuda.is_available():
        assert parse_device(np.int64(0)) == torch.device("cuda:0")
    else:
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            parse_device(np.int64(0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused(spec):
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        parse_device(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_visible_gpus_is_refused():
    count = torch.cuda.device_count()
    assert parse_device(f"cuda:{count - 1}").index == count - 1
    with pytest.raises(ValueError, match="GPU\\(s\\) are visible"):
        parse_device(f"cuda:{count}")


@pytest.mark.parametrize("argv", [
    ["evaluate", "missing-folder", "--device", "meta"],
    ["exposure", "--device", "meta"],
    ["extract", "--data-dir", ".", "--device", "meta"],
])
def test_commands_refuse_a_bad_device_before_working(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "must be cpu, cuda or cuda:<index>, got 'meta'" in err and "Traceback" not in err
