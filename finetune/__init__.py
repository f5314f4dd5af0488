"""finetune: transfer learning for image classifiers."""
__version__ = "0.1.0"
