# adactrl tune --config tune_configs/grpo.py --num_samples 32 -- --num_epochs 8 --num_workers 2
"""The GRPO search: learning rates, group size, advantage scale, reward shaping and exploration.

Keys are `adactrl train` flag names. alpha stays at its default: it sets the reward's scale,
which the learning rate already covers; trials are compared under the base run's coefficients.
"""

from ray import tune


def search_space() -> dict:
    return {
        "lr": tune.loguniform(3e-4, 1e-2),
        "stage1_lr_ratio": tune.choice([0.1, 0.3, 1.0]),
        "group_size": tune.choice([2, 4, 8]),
        "entropy_coef": tune.loguniform(1e-3, 3e-2),
        "advantage_scale": tune.choice(["batch", "none", "group"]),
        "beta": tune.uniform(0.02, 0.3),
        "gamma": tune.uniform(1.0, 4.0),
        "delta": tune.uniform(0.0, 0.3),
    }
