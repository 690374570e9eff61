"""Hyperparameter sweeps of the pipeline against the local score (`imc tune`).

space.py      the search space, declared in one place, and how to narrow it
prepare.py    features and raw matches computed once per dataset, loaded for every trial
objective.py  one trial: verification, clustering, mapping and scoring per dataset
study.py      Optuna storage (SQLite or PostgreSQL), heartbeats, sampler and pruner
report.py     report.md, best_config.json, history and importance plots
cli.py        the `imc tune` subcommand
"""
