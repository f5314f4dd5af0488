"""`python -m finetune` is the `finetune` command."""
from finetune.cli import app

app()
