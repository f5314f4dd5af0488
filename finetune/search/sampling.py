"""Random sampling seeded per trial: the draws of trial N do not depend on which process runs it."""
from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial


class TrialSeededRandomSampler(BaseSampler):
    """Uniform random sampling (log-uniform for log distributions) whose generator is seeded by
    (seed, trial number, parameter name).

    Optuna's RandomSampler keeps one generator per process: two workers started with the same
    seed would draw the same values, and a resumed study would repeat its first draws. Seeding
    each draw from the trial number keeps a study reproducible and its workers' trials distinct.

    Args:
        seed: The study's seed.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, trial.number, zlib.crc32(param_name.encode())])
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
