"""The loop's schedule on a fake backend whose rollouts finish in reverse order: the learner gets the
batches in request order, request p runs on the weights after update p - depth, and no more than
depth requests are out at once."""

from types import SimpleNamespace

from tqdm import tqdm

from adactrl.controller import Controller, ControllerConfig
from adactrl.knobs import KnobSpace
from adactrl.metrics import ROLLOUT_NUM_PLANS
from adactrl.training.checkpoints import TrainerState
from adactrl.training.config import DataConfig, TrainConfig
from adactrl.training.loop import RolloutDone, Trainer, Updated
from adactrl.training.records import BudgetRange, WeightsRef


class ReverseOrderBackend:
    """Of the requests in flight, the newest finishes first; each update bumps the version."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self.worker_restarts = self.learner_restarts = 0
        self.version = 0
        self.in_flight: list[tuple[int, int]] = []
        self.to_learn: list[int] = []
        self.submitted: list[tuple[int, int, int]] = []
        """(request_id, the request's policy_version, requests out counting this one)."""
        self.learned: list[int] = []
        self._weights = WeightsRef(0, None)

    def weights(self):
        return self._weights

    def submit(self, worker, request, weights):
        assert request.policy_version == weights.version
        out = 1 + sum(1 for r, *_ in self.submitted if r not in self.learned)
        self.in_flight.append((worker, request.request_id))
        self.submitted.append((request.request_id, request.policy_version, out))

    def learn(self, request_id):
        self.to_learn.append(request_id)

    def wait(self):
        if self.to_learn:
            request_id = self.to_learn.pop(0)
            self.learned.append(request_id)
            self.version += 1
            self._weights = WeightsRef(self.version, None)
            return Updated(request_id, self.version, {ROLLOUT_NUM_PLANS: 1.0}, self._weights, 0.0)
        worker, request_id = self.in_flight.pop()
        return RolloutDone(worker, request_id)


def test_the_schedule_learns_in_request_order_on_fixed_versions(tmp_path):
    workers, n_train, batch = 3, 24, 2  # 12 requests; default lag = 3 workers: depth 4
    config = TrainConfig(output_dir=str(tmp_path), data=DataConfig(num_train_samples=n_train), batch_size=batch,
                         num_workers=workers)  # fmt: skip
    backend = ReverseOrderBackend(workers)
    recorder = SimpleNamespace(log_train_step=lambda *a: None, log_validation=lambda *a: None)
    controller = Controller(ControllerConfig(d_model=8), KnobSpace.from_model(num_layers=16, default_top_k=8))
    trainer = Trainer(config, backend, recorder, controller, split_sizes={"train": n_train, "validation": 1},
                      state=TrainerState(budget_range=BudgetRange(10.0, 100.0)))  # fmt: skip

    trainer._train_epoch(1, tqdm(disable=True))

    depth = config.learner.max_policy_lag + 1
    assert depth == 4 and backend.learned == list(range(12))
    # Request p runs on the version after update p - depth: version p - depth + 1 (0 for the first depth).
    assert [(r, v) for r, v, _ in backend.submitted] == [(p, max(0, p - depth + 1)) for p in range(12)]
    assert max(out for *_, out in backend.submitted) <= depth
    assert trainer.state.step == 12 and trainer.weights.version == 12
