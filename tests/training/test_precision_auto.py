"""--precision auto on GPUs: bf16-mixed only where bf16 is native, not emulated (T4, V100)."""
from __future__ import annotations

from finetune.training import precision as P


def _fake_gpu(monkeypatch, native_bf16: bool) -> None:
    """A CUDA device whose bf16 is emulated unless `native_bf16` (torch's own answer for T4/V100)."""
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(P.torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(P.torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native_bf16 or including_emulation)


def test_auto_skips_bf16_on_a_gpu_that_only_emulates_it(monkeypatch):
    _fake_gpu(monkeypatch, native_bf16=False)
    choice, why = P.resolve_precision("auto", "gpu")
    assert choice == "32" and "bf16" in why


def test_auto_picks_bf16_on_a_gpu_with_native_bf16(monkeypatch):
    _fake_gpu(monkeypatch, native_bf16=True)
    assert P.resolve_precision("auto", "auto") == ("bf16-mixed", "auto: Fake GPU supports bf16")
