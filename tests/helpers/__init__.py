"""Plain helpers (not fixtures) shared by several test modules: ``from helpers.builders import make_zip``.

``tests/`` is on ``sys.path`` because pytest imports ``tests/conftest.py`` (rootdir-relative, no ``__init__.py``)
before any test module; fixtures live in ``tests/conftest.py``, never here.

* ``helpers.paths``: the repository root, params.yaml and the shared real-data folder.
* ``helpers.builders``: archives (zip/tar, unsafe members) and image bytes (noise JPEG, EXIF, corrupt JPEG, bomb PNG).
* ``helpers.hostile``: malformed params.yaml cases (``HOSTILE_CONFIGS``) and the file maker.
* ``helpers.lifecycle``: composites, shard folders, weights, configs and MLflow training runs for lifecycle tests.
* ``helpers.training``: toy shard sets and params.yaml shrunk to a seconds-long Ray Train run.
"""
