"""`finetune tune`: hyperparameter search on Optuna, coarse to fine, from one process to many machines.

The API is `finetune.tune(config, space, trials=..., storage=...)` (`finetune.search.study.tune`),
exported lazily by the top-level package so that `finetune --help` does not load Optuna and torch.
The package is named `search`, not `tune`, so that importing it never shadows that function.
"""
