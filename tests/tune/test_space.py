"""Search spaces: log sampling, narrowing around the best, edges, and --space file errors."""
from __future__ import annotations

import math

import optuna
import pytest

from finetune.errors import FinetuneError
from finetune.search.sampling import TrialSeededRandomSampler
from finetune.search.space import Param, default_space, load_space, narrow, suggest


def _draws(space, n, seed=0):
    study = optuna.create_study(sampler=TrialSeededRandomSampler(seed))
    values = []
    for _ in range(n):
        trial = study.ask()
        values.append(suggest(trial, space))
        study.tell(trial, 0.0)
    return values


def test_log_uniform_draws_spread_evenly_over_the_decades():
    space = {"lr": Param("lr", "log-uniform", 1e-4, 1e-1)}
    lrs = [v["lr"] for v in _draws(space, 600)]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs)
    # Three decades, a third of the draws each; uniform-in-value sampling would put 0.1% below 1e-3.
    for low in (1e-4, 1e-3, 1e-2):
        share = sum(low <= lr < 10 * low for lr in lrs) / len(lrs)
        assert abs(share - 1 / 3) < 0.07, (low, share)


def test_draws_depend_on_the_trial_number_not_the_process():
    space = {"lr": Param("lr", "log-uniform", 1e-4, 1e-1),
             "augment": Param("augment", "choice", choices=("none", "light"))}
    first, again = _draws(space, 5), _draws(space, 5)
    assert first == again  # a study is reproducible
    assert len({v["lr"] for v in first}) == 5  # and each trial draws its own values


def test_narrowing_in_log_space_around_the_top_trials():
    space = {"lr": Param("lr", "log-uniform", 1e-4, 1e-1), "mixup": Param("mixup", "uniform", 0.0, 0.4),
             "epochs": Param("epochs", "int", 2, 20),
             "augment": Param("augment", "choice", choices=("none", "light", "strong"))}
    top = [{"lr": 1e-3, "mixup": 0.1, "epochs": 5, "augment": "light"},
           {"lr": 2e-3, "mixup": 0.2, "epochs": 6, "augment": "strong"}]
    out = narrow(space, top, margin=0.15)
    pad = 10 ** (0.15 * 3)  # 15% of the three decades, on each side, as a factor
    assert out["lr"].low == pytest.approx(1e-3 / pad) and out["lr"].high == pytest.approx(2e-3 * pad)
    assert (out["mixup"].low, out["mixup"].high) == (pytest.approx(0.1 - 0.06), pytest.approx(0.2 + 0.06))
    assert (out["epochs"].low, out["epochs"].high) == (2, 9)  # 5 - 2.7 clipped to 2; 6 + 2.7 rounded up
    assert out["augment"].choices == ("light", "strong")


def test_narrowing_never_leaves_the_original_range():
    space = {"lr": Param("lr", "log-uniform", 1e-4, 1e-1)}
    out = narrow(space, [{"lr": 9e-2}])
    assert out["lr"].high == pytest.approx(1e-1) and out["lr"].low > 1e-4


def test_edge_is_measured_in_log_space_for_log_ranges():
    lr = Param("lr", "log-uniform", 1e-4, 1e-1)
    assert lr.edge(1.2e-4) == "low" and lr.edge(9e-2) == "high"
    assert lr.edge(1e-2 / 2) is None  # 0.0013 is far from 1e-4 in value but 1e-3 in the middle of the log range
    assert lr.edge(1.1e-3) is None


def test_default_space_freezes_over_the_backbone_groups(base_config):
    space = default_space(base_config())
    assert space["freeze_until"].choices == ("auto", None, "layer1", "layer2", "layer3", "layer4", "fc")
    assert {n for n, p in space.items() if p.kind == "log-uniform"} == {"lr", "backbone_lr_mult", "weight_decay"}
    assert "freeze_until" not in default_space(base_config(freeze_policy="linear-probe"))


@pytest.mark.parametrize("text, message", [
    ("weight_decy: {log-uniform: [1.0e-5, 1.0e-2]}", "unknown key 'weight_decy'; did you mean 'weight_decay'?"),
    ("lr: {loguniform: [1.0e-5, 1.0e-2]}", "lr: unknown kind 'loguniform'; did you mean 'log-uniform'?"),
    ("lr: {log-uniform: [0, 1.0e-2]}", "lr: log-uniform needs low > 0 (got 0)"),
    ("lr: {uniform: [0.1, 0.01]}", "lr: uniform needs [low, high] with low < high"),
    ("label_smoothing: {uniform: [0.0, 1.5]}", "label_smoothing: 1.5 is not a valid value"),
    ("augment: {choice: [light, heavy]}", "augment: 'heavy' is not a valid value"),
    ("output: {choice: [a, b]}", "'output' is set by the study, not searched"),
])
def test_space_file_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(FinetuneError) as info:
        load_space(path)
    assert message in str(info.value)


def test_space_file_kinds(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {log-uniform: [1.0e-4, 1.0e-2]}\nepochs: {int: [2, 4]}\n"
                    "freeze_until: {choice: [null, layer4]}\nmixup: {uniform: [0, 0.2]}\n")
    space = load_space(path)
    assert [(p.kind, p.low, p.high, p.choices) for p in space.values()] == [
        ("log-uniform", 1e-4, 1e-2, ()), ("int", 2, 4, ()), ("choice", None, None, (None, "layer4")),
        ("uniform", 0.0, 0.2, ())]
    assert all(math.isfinite(v["lr"]) for v in _draws(space, 3))


def test_contains():
    assert (Param("lr", "log-uniform", 1e-4, 1e-2).contains(1e-3)
            and not Param("lr", "log-uniform", 1e-4, 1e-2).contains("auto"))
    assert Param("augment", "choice", choices=("none", "light")).contains("none")
    assert not Param("mixup", "uniform", 0.1, 0.4).contains(0.0)


def test_the_top_values_stay_inside_their_narrowed_range():
    space = {"lr": Param("lr", "log-uniform", 1e-3, 1e-2)}
    out = narrow(space, [{"lr": 1e-3}])  # exp(log(1e-3)) is 0.0010000000000000002
    assert out["lr"].low == 1e-3 and out["lr"].contains(1e-3)


def test_no_edge_warning_at_a_limit_the_setting_cannot_pass():
    from types import SimpleNamespace

    from finetune.search.outputs import edge_warnings

    space = {"label_smoothing": Param("label_smoothing", "uniform", 0.0, 0.2),
             "lr": Param("lr", "log-uniform", 1e-4, 1e-2)}
    best = SimpleNamespace(params={"label_smoothing": 0.0, "lr": 9.9e-3})
    # 0 smoothing is RunConfig's own floor (ge=0): widening the range cannot help; the lr edge can.
    assert [w.split()[0] for w in edge_warnings(best, space, space)] == ["lr"]


# ----- stage 1: local draws around the base settings ----------------------------------------------
_SPACE7 = {"lr": Param("lr", "log-uniform", 1e-4, 3e-2),
           "backbone_lr_mult": Param("backbone_lr_mult", "log-uniform", 0.01, 1),
           "weight_decay": Param("weight_decay", "log-uniform", 1e-5, 0.1),
           "freeze_until": Param("freeze_until", "choice", choices=("auto", None, "layer4")),
           "augment": Param("augment", "choice", choices=("auto", "none", "light")),
           "label_smoothing": Param("label_smoothing", "uniform", 0.0, 0.2),
           "mixup": Param("mixup", "uniform", 0.0, 0.4)}
_BASE7 = {"lr": 1e-3, "backbone_lr_mult": 1.0, "weight_decay": 0.01, "freeze_until": "auto", "augment": "auto",
          "label_smoothing": 0.0, "mixup": 0.0}


def test_local_trials_change_one_or_two_settings_of_the_base_and_every_third_draws_all():
    study = optuna.create_study(sampler=TrialSeededRandomSampler(0, _BASE7, list(_SPACE7)))
    changed = []
    for _ in range(30):
        trial = study.ask()
        values = suggest(trial, _SPACE7)
        study.tell(trial, 0.0)
        changed.append({k for k, v in values.items() if v != _BASE7[k]})
        assert all(_SPACE7[k].contains(v) for k, v in values.items())
    local = [c for n, c in enumerate(changed) if n % 3]
    assert all(1 <= len(c) <= 2 for c in local)  # a changed choice is never the base's own
    assert {len(c) for c in local} == {1, 2} and set().union(*local) == set(_SPACE7)  # every setting gets its turn
    assert all(len(changed[n]) >= 5 for n in range(0, 30, 3))  # global: continuous ones always move


def test_local_draws_are_reproducible_and_only_local_trials_depend_on_the_base():
    def draws(sampler):
        study = optuna.create_study(sampler=sampler)
        out = []
        for _ in range(6):
            trial = study.ask()
            out.append(suggest(trial, _SPACE7))
            study.tell(trial, 0.0)
        return out

    assert draws(TrialSeededRandomSampler(3, _BASE7, list(_SPACE7))) == draws(
        TrialSeededRandomSampler(3, _BASE7, list(_SPACE7)))
    # without a base every trial is global: the local trials' draws (1, 2, 4, 5) differ from the anchored ones
    unanchored, anchored = draws(TrialSeededRandomSampler(3)), draws(TrialSeededRandomSampler(3, _BASE7, list(_SPACE7)))
    assert [unanchored[n] == anchored[n] for n in range(6)] == [True, False, False, True, False, False]


def test_a_local_trial_never_spends_itself_on_a_setting_with_one_value():
    """A --space choice of one value cannot change: stage 1's local trials pick among the others."""
    from finetune.search.study import changeable

    space = {**_SPACE7, "augment": Param("augment", "choice", choices=("auto",))}
    names = changeable(space)
    assert "augment" not in names and set(names) == set(_SPACE7) - {"augment"}
    sampler = TrialSeededRandomSampler(0, _BASE7, names)
    assert all("augment" not in sampler.changed(n) for n in range(1, 60) if n % 3)
