"""Bounds of the numeric settings and help text that several modules share (the CLI, the rules, the run)."""
from __future__ import annotations

DEVICES_HELP = "a device count (1, 2), GPU ids such as 0,1, -1 (every GPU) or auto"
BATCHES_HELP = "a whole number of batches (1, 10) or a fraction of them such as 0.5 (1.0: all)"
# Appended to a required field's help by the commands that also take it from a recipe or a run (run, tune).
REQUIRED_ELSEWHERE = "Required here or in the recipe (not with --resume)."
# Upper bounds of the counts. Each lies far above any real run (100,000 epochs of one batch at ten
# steps a second take three hours) and low enough that a mistyped value (an extra digit, a pasted
# number) fails at once with its range, instead of hanging or exhausting memory.
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_IMAGE_SIZE = 16_384  # one 3 x 16384 x 16384 float input is 3.2 GB
MAX_STEPS = 1_000_000
MAX_VIEWS = 1_000
MAX_NODES = 10_000
MAX_SEED = 2**32 - 1  # numpy and Lightning seeds: outside 0..2^32-1 Lightning draws a random seed instead
