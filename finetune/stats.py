"""Small statistics the reports share: intervals of a proportion measured on a few images."""
from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95% interval


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): unlike p +- z sqrt(p(1-p)/n) it stays
    inside [0, 1] and is not empty at p = 0 or 1, which matters for the few dozen images a val split may hold.

    Returns:
        (low, high); (0.0, 1.0) for no trials.
    """
    if trials <= 0:
        return 0.0, 1.0
    p, z2 = successes / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)
