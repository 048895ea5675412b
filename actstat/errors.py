"""The project's exceptions: every user mistake is one of these, and the CLI turns it into exit 2."""


class ActstatError(Exception):
    """A problem with the user's input that they can fix; its message is one readable line."""


class ConfigError(ActstatError):
    """A configuration value (from a YAML file or a command-line option) is not acceptable."""


class DataError(ActstatError):
    """The input data cannot be found, read or used."""


class DeviceError(ActstatError):
    """The requested device or dtype is not available on this machine."""


class OutputError(ActstatError):
    """An output file cannot be written."""


class ModelSourceError(ActstatError):
    """A user's model factory cannot be found, imported, called, or does not return an nn.Module."""


class ModelError(ActstatError):
    """A model cannot be profiled: nothing in it is measurable, its forward fails on the inputs,
    or its output holds no tensor to take a loss of."""


class InitError(ActstatError):
    """A data-dependent init (lsuv) cannot initialise the model on the batch: a layer's output
    has no spread to scale (an all-zero input, a dead layer) or is not finite."""
