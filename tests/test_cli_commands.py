"""The ``fastunlearn`` command lists every subcommand and each one answers --help."""

import pytest

from fastunlearn import cli

COMMANDS = (
    "info", "demo", "remove", "extract", "repair", "unlearn-features", "forget", "evaluate",
    "exposure", "html",
)


def test_every_command_is_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert f"fastunlearn {command}" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_demo_run_directly_refuses_a_bad_result_dir_before_any_section(tmp_path, capsys):
    from fastunlearn import demo

    occupied = tmp_path / "a file"
    occupied.write_text("mine\n")
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--device", "cpu", "--result-dir", str(occupied)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "'--result-dir'" in captured.err and "[1]" not in captured.out
    assert occupied.read_text() == "mine\n"
