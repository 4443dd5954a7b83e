"""Trainer-based recipes: pretrain, finetune, evaluate, predict (each also a `traffic-moe` sub-command).

Imported on use only: they need datasets/scikit-learn/matplotlib, which the model files do not."""
