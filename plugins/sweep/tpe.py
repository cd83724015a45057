"""The `tpe` sampler of `lmforge sweep`: an Optuna study in the sweep folder, with pruning."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.plugins.sweep.space import Param


def optuna_available() -> bool:
    return importlib.util.find_spec("optuna") is not None


def _distribution(param: Param):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if param.kind == "choice":
        return CategoricalDistribution(list(param.choices))
    if param.kind == "int":
        return IntDistribution(int(param.low), int(param.high), log=param.log)
    return FloatDistribution(param.low, param.high, log=param.kind == "loguniform")


class TpeSearch:
    """TPE proposals and median pruning, stored in `optuna.db` so a rerun continues the study.

    Trials are addressed by Optuna's trial number, which the sweep records for each of its own.
    """

    def __init__(self, folder: Path, params: list[Param], seed: int, direction: str,
                 prune: bool, prune_startup_trials: int, prune_warmup_steps: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.params = params
        folder.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{folder / 'optuna.db'}"
        existing = optuna.create_study(storage=storage, study_name="sweep", direction=direction,
                                       load_if_exists=True)
        # A sampler seeded with the seed alone would replay its first draws after a resume.
        sequence = np.random.SeedSequence([seed, len(existing.trials)])
        sampler_seed = int(sequence.generate_state(1)[0])
        pruner = (optuna.pruners.MedianPruner(prune_startup_trials, prune_warmup_steps)
                  if prune else optuna.pruners.NopPruner())
        self.study = optuna.create_study(
            storage=storage, study_name="sweep", direction=direction, load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=sampler_seed), pruner=pruner)
        self.trials: dict[int, Any] = {}

    def ask(self, fixed: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """A new Optuna trial: its number and the params it proposes (`fixed`: these)."""
        if fixed is not None:
            self.study.enqueue_trial(fixed)
        trial = self.study.ask({p.key: _distribution(p) for p in self.params})
        self.trials[trial.number] = trial
        return trial.number, dict(trial.params)

    def abandon_unknown(self, known: set[int]) -> None:
        """Fail trials left running by a sweep that stopped before recording them."""
        for frozen in self.study.get_trials(deepcopy=False):
            if frozen.state == self.optuna.trial.TrialState.RUNNING and frozen.number not in known:
                self.study.tell(frozen.number, state=self.optuna.trial.TrialState.FAIL)

    def _trial(self, number: int):
        if number not in self.trials:
            # a trial that was running when the sweep stopped: reattach to the stored one (Optuna
            # offers no public way to get a Trial back from its number)
            frozen = self.study.get_trials(deepcopy=False)[number]
            self.trials[number] = self.optuna.trial.Trial(self.study, frozen._trial_id)
        return self.trials[number]

    def reported_steps(self, number: int) -> set[int]:
        return set(self.study.get_trials(deepcopy=False)[number].intermediate_values)

    def report(self, number: int, step: int, value: float) -> bool:
        """Report an intermediate value; True when the pruner says to stop this trial."""
        trial = self._trial(number)
        trial.report(value, step)
        return trial.should_prune()

    def finish(self, number: int, value: float) -> None:
        self.study.tell(number, value, skip_if_finished=True)

    def prune(self, number: int) -> None:
        self.study.tell(number, state=self.optuna.trial.TrialState.PRUNED, skip_if_finished=True)

    def fail(self, number: int) -> None:
        self.study.tell(number, state=self.optuna.trial.TrialState.FAIL, skip_if_finished=True)
