"""The orchestration layer: composes the core library (`adactrl.training` and below), the rollout
workers (`rollout_workers/`) and the learner (`learner/`) into a training run.

- `driver`: `run_training`, what `adactrl train` runs: state, resume checks, backend, summary.
- `local`: the in-process backend (workers and learner as plain objects; deterministic).
- `ray_backend`: the Ray backend (workers and the learner as actors in one placement group).
- `learner_actor`: the learner as a Ray actor (a `learner.Learner` plus the object store).
- `dashboard`: Ray dashboard metrics, a training observer.
- `tuning`: Ray Tune search over `adactrl train` runs (`adactrl tune`), reporting through an observer.

Only this layer imports Ray, `learner` and `rollout_workers`; the CLI imports it lazily.
"""
