"""Random sampling seeded per trial: the draws of trial N do not depend on which process runs it.

Stage 1 of a study mixes two kinds of random trial around the base settings (the defaults, or the
user's recipe and flags), which are themselves a trial:

- a *local* trial keeps the base and changes one or two settings, each drawn over its whole range;
- a *global* trial (every `GLOBAL_EVERY`-th) draws every setting.

Why not all global: the defaults already follow the data, and a trial that moves all seven
settings at once mostly measures the worst of them. On the quality benchmark's quick regime
(benchmarks/results/one-change.md), 29 of 33 one-setting changes of the default lost test top-1, by
up to 0.47 (the head alone at lr 1e-3; every layer training lost 0.08-0.22, smoothing 0.1 and mixup
0.2 0.05-0.18), and the 4 that gained did so by 0.007 at most. A draw that changes every setting thus
seldom lands near the default, and 8 of them seldom rank anything above it. A local draw measures
one or two settings' effect from a good point, which is what stage 2 narrows around; the global ones
keep the search from being only local.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

GLOBAL_EVERY = 3  # trials 3, 6, 9, ... draw every setting; the others are local to the base


class TrialSeededRandomSampler(BaseSampler):
    """Uniform random sampling (log-uniform for log distributions) whose generator is seeded by
    (seed, trial number, parameter name).

    Optuna's RandomSampler keeps one generator per process: two workers started with the same
    seed would draw the same values, and a resumed study would repeat its first draws. Seeding
    each draw from the trial number keeps a study reproducible and its workers' trials distinct.

    Args:
        seed: The study's seed.
        base: The base settings (name -> value). Given, trials whose number is not a multiple of
            `GLOBAL_EVERY` are local: they keep these values except for one or two settings.
        names: The searched settings, in the space's order; the local trials choose among them.
    """

    def __init__(self, seed: int = 0, base: Mapping[str, Any] | None = None, names: Sequence[str] = ()) -> None:
        self.seed = seed
        self.base = dict(base) if base is not None else None
        self.names = tuple(names)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def changed(self, number: int) -> tuple[str, ...] | None:
        """The settings local trial `number` draws (the others keep the base); None for a global trial."""
        if self.base is None or not self.names or number % GLOBAL_EVERY == 0:
            return None
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, number, zlib.crc32(b"changed settings")])
        k = min(len(self.names), 1 + int(rng.integers(2)))
        return tuple(self.names[i] for i in sorted(rng.choice(len(self.names), size=k, replace=False)))

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, trial.number, zlib.crc32(param_name.encode())])
        changed = self.changed(trial.number)
        if changed is None or param_name not in self.base:
            return draw(rng, param_distribution)
        if param_name not in changed:
            return self.base[param_name]
        if isinstance(param_distribution, CategoricalDistribution) and len(param_distribution.choices) > 1:
            # a change: another choice than the base's
            others = [c for c in param_distribution.choices if c != self.base[param_name]]
            return others[int(rng.integers(len(others)))]
        return draw(rng, param_distribution)


def draw(rng: np.random.Generator, dist: BaseDistribution) -> Any:
    """One value of `dist`: uniform in log space for log distributions."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(rng.integers(len(dist.choices)))]
    if isinstance(dist, IntDistribution):
        if dist.log:  # uniform in log over [low - 0.5, high + 0.5], rounded: every integer reachable
            value = math.exp(rng.uniform(math.log(dist.low - 0.5 if dist.low > 1 else dist.low),
                                         math.log(dist.high + 0.5)))
            return int(min(dist.high, max(dist.low, round(value))))
        steps = (dist.high - dist.low) // dist.step
        return int(dist.low + dist.step * int(rng.integers(steps + 1)))
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
        if dist.step is not None:
            steps = int(round((dist.high - dist.low) / dist.step))
            return float(dist.low + dist.step * int(rng.integers(steps + 1)))
        return float(rng.uniform(dist.low, dist.high))
    raise TypeError(f"unsupported distribution {dist!r}")
