"""Bad input fails with a clear message before a model loads or Ray starts."""

import pytest

import adactrl.orchestration.driver as driver
from adactrl.cli import main
from adactrl.reward import RewardConfig
from adactrl.training.config import DataConfig, LearnerConfig, LossConfig, TrainConfig


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the command gets as far as training (and so as far as Ray)."""

    def refuse(*args, **kwargs):
        raise AssertionError("run_training was reached: the bad flag was not caught first")

    monkeypatch.setattr(driver, "run_training", refuse)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--group_size", "1"], "group_size must be >= 2"),
        (["--dataset_names", "imagenet"], "unknown dataset names ['imagenet']"),
        (["--model_path", "/no/such/model"], "--model_path /no/such/model does not exist"),
        (["--gamma", "-1"], "RewardConfig.gamma must be a finite number >= 0"),
        (["--alpha", "nan"], "RewardConfig.alpha"),
        (["--budget_range_ms", "50", "10"], "0 < low < high"),
        (["--lr", "0"], "lr must be a finite number > 0"),
        (["--clip_eps", "-0.1"], "clip_eps must be > 0"),
        (["--max_policy_lag", "-1"], "max_policy_lag must be >= 0"),
        (["--num_workers", "0"], "num_workers must be >= 1"),
        (["--learner_cpus", "0"], "worker_cpus and learner_cpus must be > 0"),
        (["--resume", "--load_checkpoint", __file__], "drop --load_checkpoint"),
        (["--latency_mode", "estimated"],
         "--latency_mode estimated needs --latency_estimator PATH: run `adactrl baselines"),
        (["--latency_mode", "estimated", "--latency_estimator", "/no/such.pt"],
         "--latency_estimator /no/such.pt is not a file: run `adactrl baselines"),
        (["--latency_estimator", __file__], "used only with --latency_mode estimated"),
    ],
)
def test_bad_flags_fail_before_ray(flags, message, no_training, capsys):
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adactrl train: error:") and message in err


def test_resume_without_a_checkpoint_fails_before_ray(tmp_path, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("ray.init", no_ray)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint_epoch_N.pt"):
        driver.run_training(TrainConfig(output_dir=str(tmp_path / "empty"), resume=True))


def test_advantage_scale_flag_reaches_the_learner_config():
    from adactrl.cli import build_parser
    from adactrl.commands.train import config_from_args

    args = build_parser().parse_args(["train", "--advantage_scale", "none"])
    assert config_from_args(args).learner.loss.advantage_scale == "none"
    assert config_from_args(args).to_params()["learner.loss.advantage_scale"] == "none"


def test_update_passes_flag_reaches_the_learner_config():
    from adactrl.cli import build_parser
    from adactrl.commands.train import config_from_args

    args = build_parser().parse_args(["train", "--update_passes", "2"])
    assert config_from_args(args).learner.update_passes == 2
    assert config_from_args(args).to_params()["learner.update_passes"] == 2
    with pytest.raises(ValueError, match="update_passes must be >= 1"):
        config_from_args(build_parser().parse_args(["train", "--update_passes", "0"]))


def test_config_defaults_are_valid_and_flatten_for_mlflow():
    params = TrainConfig().to_params()
    assert params["group_size"] == 4 and params["learner.loss.loss"] == "grpo"
    assert params["data.dataset_names"] == "synthetic" and params["reward.gamma"] == RewardConfig().gamma
    assert params["learner.max_policy_lag"] == TrainConfig().num_workers  # None resolves to the worker count
    assert params["latency_mode"] == "measured" and params["latency_estimator"] is None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LossConfig(loss="ppo"), "loss must be one of"),
        (lambda: LossConfig(advantage_scale="rank"), "advantage_scale must be one of"),
        (lambda: LearnerConfig(stage1_lr_ratio=-1), "stage1_lr_ratio"),
        (lambda: LearnerConfig(plateau_factor=1.5), "plateau_factor"),
        (lambda: LearnerConfig(update_passes=0), "update_passes must be >= 1"),
        (lambda: DataConfig(dataset_names="synthetic"), "non-empty list"),
        (lambda: DataConfig(num_train_samples=0), "num_train_samples"),
        (lambda: TrainConfig(oracle_samples=-1), "oracle_samples"),
        (lambda: TrainConfig(latency_mode="guessed"), "latency_mode must be one of"),
    ],
)
def test_config_validation(build, message):
    with pytest.raises(ValueError, match=message):
        build()
