"""--precision auto picks bf16-mixed only where the hardware has it."""
from __future__ import annotations

import pytest

from finetune.errors import FinetuneError
from finetune.training import precision as P


def test_auto_on_cpu_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve_precision("auto", "auto")[0] == "bf16-mixed"
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    choice, why = P.resolve_precision("auto", "cpu")
    assert choice == "32" and "no native bf16" in why


def test_explicit_precision_is_kept_and_16_mixed_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    assert P.resolve_precision("32", "auto") == ("32", "as requested")
    with pytest.raises(FinetuneError, match="bf16-mixed"):
        P.resolve_precision("16-mixed", "cpu")


def test_channels_last_defaults_to_mixed_precision_only():
    assert P.resolve_channels_last(None, "bf16-mixed") is True
    assert P.resolve_channels_last(None, "32") is False
    assert P.resolve_channels_last(False, "bf16-mixed") is False
