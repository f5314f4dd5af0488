"""Errors a user can act on. The CLI prints their message without a traceback."""


class FinetuneError(Exception):
    """Base class: the message names the bad value and what to do instead."""


class DataError(FinetuneError):
    """The image folder cannot be used: missing, too few classes, no readable images."""


class UnknownBackboneError(FinetuneError):
    """The backbone name is neither a timm model nor a `tv:` torchvision model."""


class UnknownLayerError(FinetuneError):
    """A layer name (e.g. for `--freeze-until`) is not a layer of the backbone."""


class WeightsError(FinetuneError):
    """Weights could not be resolved, downloaded or loaded."""
