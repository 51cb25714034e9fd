"""The parts of ``agpo run`` (:mod:`agpo_trainer.launcher` runs them in order).

- :mod:`.servers`: the run's vLLM servers: started, waited for, a dead one replaced on its port.
- :mod:`.trainer_group`: torchrun (its command line and environment), started, stopped, and why
  it failed.
- :mod:`.restarts`: the restart policy: the ``runPolicy.backoffLimit`` budget servers and trainer
  groups share, and what a (re)start resumes from.
- :mod:`.console`: what the user sees: console lines, the progress bar fed by ``/status``, the
  final summary.

What is checked before any of these starts is :mod:`agpo_trainer.preflight`.
"""
