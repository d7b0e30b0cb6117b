"""Training as a library: the shared loop (`common`), the SIDE classifier (`classifier`) and the audited DDPM (`dpm`).

``training/train_classifier.py`` and ``training/train_dpm.py`` in the repository are thin launchers over
[`classifier.train_classifier`] and [`dpm.train_dpm`].
"""
