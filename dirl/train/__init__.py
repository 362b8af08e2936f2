"""Training mechanisms; the train and tune stages that use them are ``dirl/stages/train.py`` and ``tune.py``.

worker.py      the Ray Train worker (the epoch loop) and its TorchTrainer
epoch.py       one epoch: optimizer and lr schedule, the training steps, validation batches (pure PyTorch)
checkpoint.py  checkpoints and the exported weights
naming.py      the stable Ray run name (model, settings, data, code)
search.py      the tune search: space, one trial, ASHA, harvest
best_yaml.py   results/tune/best.yaml, written by tune and read by train; model.pretrained resolved
outputs.py     the files each stage leaves
"""

from dirl.train.checkpoint import export_model, load_checkpoint, save_checkpoint
from dirl.train.epoch import build_optimizer, build_scheduler, evaluate_batches, seed_everything, train_one_epoch

__all__ = [
    "build_optimizer",
    "build_scheduler",
    "train_one_epoch",
    "evaluate_batches",
    "seed_everything",
    "save_checkpoint",
    "load_checkpoint",
    "export_model",
]
