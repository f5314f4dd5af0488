"""@user_errors: a user error ends a command with one line per problem and exit status 2."""
from __future__ import annotations

import pytest
import typer

from finetune.config import RunConfig
from finetune.console import user_errors
from finetune.errors import DataError


def _exit_and_stderr(fn, capsys) -> tuple[int, str]:
    with pytest.raises(typer.Exit) as exit_info:
        fn()
    return exit_info.value.exit_code, capsys.readouterr().err


def test_a_finetune_error_is_one_line_and_status_2(capsys):
    @user_errors
    def command() -> None:
        raise DataError("no images in /data [train]")

    code, err = _exit_and_stderr(command, capsys)
    assert code == 2 and err == "Error: no images in /data [train]\n"  # rich markup in the message is kept as text


def test_a_bad_setting_names_its_flag_and_value(capsys):
    @user_errors
    def command() -> None:
        RunConfig(data=".", optimizer="lamb", epochs=0)

    code, err = _exit_and_stderr(command, capsys)
    lines = ["Error: " + " ".join(part.split()) for part in err.split("Error: ")[1:]]  # rich wraps long lines
    assert code == 2 and len(lines) == 3, err
    assert lines[0] == "Error: --backbone is required (on the command line or in the recipe)"
    assert lines[1].startswith("Error: --epochs: Input should be greater than or equal to 1") and "(got 0)" in lines[1]
    assert "--optimizer" in lines[2] and "'sgd'" in lines[2] and "(got 'lamb')" in lines[2]


def test_a_value_error_is_a_user_error_only_where_the_command_says_so(capsys):
    def fails() -> None:
        raise ValueError("unknown TTA mode 'flop'; valid: none, flip")

    with pytest.raises(ValueError, match="flop"):
        user_errors(fails)()
    code, err = _exit_and_stderr(user_errors(value_errors=True)(fails), capsys)
    assert code == 2 and err == "Error: unknown TTA mode 'flop'; valid: none, flip\n"


def test_the_command_keeps_its_signature_and_result():
    import inspect

    @user_errors(value_errors=True)
    def command(top_k: int = 5) -> int:
        """Doc."""
        return top_k * 2

    assert command(3) == 6 and command.__doc__ == "Doc." and list(inspect.signature(command).parameters) == ["top_k"]
