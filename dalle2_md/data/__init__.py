"""The data layer, the bottom of the package: nothing here knows about models.

- labels: `LabelMap`, user labels on disk ("ID_5") <-> the contiguous `user_indices` of the networks
- scanning: finding a data root's images and users (three layouts), naming unreadable files,
  the images' own size on disk
- splits: the reproducible per-user train / val / test split and its JSON file
- dataset: `MicroDopplerDataset`, every image decoded once to model space ([-1, 1])
- colormap: jet RGB <-> scalar spectrogram values
- display: colourising, grids and PNG writing
- simulator: the physics-based gait micro-Doppler simulator
- synthesize: writing a simulated data set in any of the layouts
"""
