"""Judging spectrograms, real or generated, by who they belong to and how they move.

- recogniser: the identity CNN every identity measure uses, its training and cache
- augmentations: the recogniser's physics-aware augmentations (Doppler scale and flip, time
  stretch, noise floor, re-speckle)
- metrics: identity accuracy, CAS, domain FID and KID, diversity, memorisation, background
  defects, kinematic fidelity
- kinematics: torso velocity, limb envelopes and cadence read back from a spectrogram
- stages: identity stage by stage (embedding, prior, decoder)
- report: `evaluate_samples`, the written evaluation (metrics.json, report.md, plots)
- protocol: the fixed evaluation protocol (gait31, K-shot split, recogniser, profiles)
Below generation: curation filters samples with the recogniser and the kinematic reader.
"""
