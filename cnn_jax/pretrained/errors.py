"""The errors of weight loading: each message names the file or key at fault and the fix."""


class PretrainedError(ValueError):
    """Pretrained weights could not be loaded; the message says why and what to do."""


class WeightsNotFoundError(PretrainedError):
    """The weights' file is not on this machine (and cannot be downloaded offline)."""


class CorruptWeightsError(PretrainedError):
    """A weights file is truncated, corrupt, of an unknown format, or fails its checksum."""


class UnsafeWeightsError(PretrainedError):
    """A pickle in a weights file asks for code that a tensor state dict never needs."""


class WeightMappingError(PretrainedError):
    """Source tensors and the model's variables do not correspond one to one with equal shapes."""
