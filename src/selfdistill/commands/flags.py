"""The flags of ``train`` that set config keys, shared by the parser (:mod:`selfdistill.cli`) and the
commands that turn parsed flags into a config (``train``, ``bench``)."""

# flag -> dotted config key
TRAIN_FLAGS = {
    "method": "method.name", "dataset": "data.dataset", "model": "model.name", "epochs": "train.epochs",
    "seed": "train.seed", "batch_size": "data.batch_size", "lr": "optim.lr", "label_noise": "data.label_noise",
    "train_subset": "data.train_subset", "data_dir": "data.data_dir", "device": "train.device",
    "threads": "train.threads",
}
# train's flags that bench shares (bench builds the same trainer, without --out)
BENCH_FLAGS = ("method", "dataset", "model", "teacher", "seed", "batch_size", "lr", "data_dir", "device", "threads",
               "config", "set")
