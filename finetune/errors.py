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


class Interrupted(KeyboardInterrupt):
    """A command stopped by Ctrl-C (SIGINT) or SIGTERM. The message says where it stopped and how to go on.

    A KeyboardInterrupt, so that `except Exception` never swallows it and a notebook shows it as the
    interrupt it is.

    Attributes:
        signal_number: The signal that stopped it (2: SIGINT, 15: SIGTERM); the CLI exits with 128 + it.
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
