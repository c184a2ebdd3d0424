"""Errors a user can act on. The CLI prints their message as one line, without a traceback."""


class LatentaeError(Exception):
    """Base class for errors caused by the user's input (paths, files, options)."""


class ModelFormatError(LatentaeError):
    """A path that is not a model latentae can open, or a model of the wrong class."""


class MissingWeightsError(LatentaeError):
    """A pretrained weight file (LPIPS trunk, Inception, ...) is absent and cannot be downloaded."""
