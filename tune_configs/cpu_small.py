# adactrl tune --config tune_configs/cpu_small.py --num_samples 2 -- --num_epochs 2 --num_workers 1 --num_train_samples 8 --num_val_samples 4 --batch_size 4 --group_size 2 --calibration_samples 1 --num_val_budgets 2 --oracle_samples 0
"""A search small enough for a 2-core laptop: two trials of two short epochs on the embedded model."""

from ray import tune


def search_space() -> dict:
    return {
        "lr": tune.loguniform(1e-3, 1e-2),
        "entropy_coef": tune.choice([0.0, 0.01]),
    }
