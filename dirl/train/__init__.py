"""Training: the train and tune stages and what they are made of.

    trainer.py   the train stage, ``train(cfg) -> summary``          tune.py     the tune stage
    loop.py      the training loop (pure PyTorch)                    search.py   search space, trial, ASHA, harvest
    worker.py    the Ray Train worker and its TorchTrainer           tuned.py    best.yaml, written and read
    checkpoint.py  checkpoints and the exported weights              outputs.py  the files each stage leaves

    from dirl.train import train
    summary = train(load_config("params.yaml"), out_dir="results/train")
"""

from dirl.train.checkpoint import export_model, load_checkpoint, save_checkpoint
from dirl.train.loop import build_optimizer, build_scheduler, evaluate_batches, seed_everything, train_one_epoch


def train(*args, **kwargs):
    """Run the train stage (see :func:`dirl.train.trainer.train`); imports Ray only when called."""
    from dirl.train.trainer import train as _train

    return _train(*args, **kwargs)


__all__ = ["train", "build_optimizer", "build_scheduler", "train_one_epoch", "evaluate_batches", "seed_everything",
           "save_checkpoint", "load_checkpoint", "export_model"]
