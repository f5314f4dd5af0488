"""Lightning callbacks of a fine-tuning run, one per file."""
