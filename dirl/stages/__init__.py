"""The pipeline's stages, one module each, in dvc.yaml's order: ``python -m dirl.stages.<name>`` runs one.

Each module reads like a recipe of the mechanisms in ``dirl.data``, ``dirl.train`` and ``dirl.lifecycle``; it
declares ``PARAMS`` (what dvc.yaml lists as its params) and ``run(cfg) -> summary`` (see ``contract``).
"""

STAGES = ("ingest", "preprocess", "synthesize", "tune", "train", "evaluate", "register")
