"""`finetune tune` on the command line: run's options, clean errors, and the API's name."""
from __future__ import annotations

import inspect

import typer
from typer.testing import CliRunner

from finetune.cli import app, run
from finetune.search.command import NOT_FROM_RUN


def _options(name: str) -> set[str]:
    command = typer.main.get_command(app).commands[name]
    return {p.name for p in command.params}


def test_tune_has_every_option_of_run_but_the_study_s_own():
    inherited = set(inspect.signature(run).parameters) - set(NOT_FROM_RUN)
    options = _options("tune")
    assert inherited <= options
    assert {"trials", "timeout", "output", "storage", "space", "stages", "pruner", "final_run"} <= options
    assert not {"resume", "overwrite", "export", "progress"} & options


def test_an_unknown_space_key_is_a_one_line_error(tiny_data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {log-uniform: [1.0e-4, 1.0e-2]}\nlabel_smothing: {uniform: [0, 0.1]}\n")
    result = CliRunner().invoke(app, ["tune", "--backbone", "test_resnet", "--data", str(tiny_data), "--trials", "2",
                                      "--space", str(space), "--output", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "unknown key 'label_smothing'; did you mean 'label_smoothing'?" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "s").exists()


def test_a_bad_run_option_is_refused_as_run_refuses_it(tiny_data, tmp_path):
    result = CliRunner().invoke(app, ["tune", "--backbone", "test_resnet", "--data", str(tiny_data),
                                      "--augment", "heavy", "--output", str(tmp_path / "s")])
    assert result.exit_code == 2 and "--augment" in result.output and "heavy" in result.output


def test_finetune_tune_is_the_api_function_even_after_the_package_is_imported():
    import finetune.search.space  # noqa: F401 - the search package, imported as the CLI does
    from finetune.search.study import tune

    assert finetune.tune is tune  # a plain function, not a package made callable
    assert finetune.TuneResult.__name__ == "TuneResult"
