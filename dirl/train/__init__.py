"""Training mechanisms; the train and tune stages that use them are ``dirl/stages/train.py`` and ``tune.py``.

worker.py      the Ray Train worker (the epoch loop) and its TorchTrainer
epoch.py       one epoch: optimizer and lr schedule, the training steps, validation batches (pure PyTorch)
checkpoint.py  checkpoints and the exported weights
naming.py      the stable Ray run name (model, settings, data, code)
search_space.py  the tune search space and its checks (no torch: `dirl config` uses it)
search.py      the tune search: one trial, ASHA, harvest
best_yaml.py   results/tune/best.yaml, written by tune and read by train; model.pretrained resolved
outputs.py     the files each stage leaves
"""

# Nothing is imported here: `dirl config` imports search_space.py without loading torch.
