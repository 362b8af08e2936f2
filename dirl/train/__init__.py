"""Training: bare PyTorch loop pieces, checkpoints, the Ray Train worker and the train stage driver.

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
