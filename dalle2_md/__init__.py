"""dalle2-md: user-conditioned DALLE2-style generation of radar micro-Doppler gait spectrograms.

Stages live one per module: `synth` (gait simulator), `labels`, `scanning`, `splits`, `dataset`
(the data layer; `data` re-exports it), `display` (colourising, grids),
`colormap`, `kinematics`, `clip` (embedding), `prior`, `decoder`, `upsampler`, `model` (the chain),
`training`, `recogniser`, `metrics`, `report` (the evaluation), `cli`.

The public classes are importable from here (`from dalle2_md import MicroDopplerDALLE2`) but
are loaded on first use (module `__getattr__`, PEP 562): importing the package must not pull in
torch and dalle2-pytorch, so that `dalle2-md --help` stays quick.
"""

from importlib import import_module

from dalle2_md.version import __version__

# public name -> module that defines it
_LAZY = {
    "MicroDopplerDALLE2": "models.chain",
    "UserConditionedDiffusionPrior": "models.prior",
    "UserConditionedPriorNetwork": "models.prior",
    "PriorConfig": "models.prior",
    "MicroDopplerDecoder": "models.decoder",
    "DecoderConfig": "models.decoder",
    "MicroDopplerUpsampler": "models.upsampler",
    "UpsamplerConfig": "models.upsampler",
    "MicroDopplerClip": "models.embedding",
    "ClipConfig": "models.embedding",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
