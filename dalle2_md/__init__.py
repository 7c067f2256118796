"""dalle2-md: user-conditioned DALLE2-style generation of radar micro-Doppler gait spectrograms.

Stages live one per module: `synth` (gait simulator), `data` (data sets, label maps, splits),
`colormap`, `kinematics`, `clip` (embedding), `prior`, `decoder`, `model` (the chain),
`training`, `evaluate`, `cli`. Imports here stay light so `dalle2-md --help` is quick.
"""

from .version import __version__

__all__ = ["__version__"]
