"""DVC stage entry point: ``python pipeline/stages.py <stage> [--set key=value ...]``.

Each stage in ``dvc.yaml`` calls this file with its name; it runs the same code as the matching
``dirl`` subcommand, reading ``params.yaml`` from the workspace.
"""

import sys

from dirl.cli import main

STAGES = {
    "ingest": ["data", "ingest"],
    "preprocess": ["data", "preprocess"],
    "synthesize": ["data", "synthesize"],
    "tune": ["tune"],
    "train": ["train"],
    "evaluate": ["evaluate"],
    "register": ["register"],
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        sys.exit(f"usage: python pipeline/stages.py {{{'|'.join(STAGES)}}} [--set key=value ...]")
    sys.exit(main(STAGES[sys.argv[1]] + sys.argv[2:]))
