"""mitosis: measure representation mitosis (redundant clones) in wide neural networks.

The Python API (docs/api.md) is the pipeline's stages and the science beneath them::

    import mitosis_cli as mitosis

    acts = mitosis.read_activations("runs/w512-s0/acts.h5")      # or mitosis.Activations.from_arrays(...)
    tables = mitosis.measure_clones([acts], mitosis.CloneSettings(repeats=10))
    tables.summary.to_pandas()

Names are loaded on first use, so ``import mitosis_cli`` stays cheap (no torch until it is needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    # activation files and arrays
    "Activations": "mitosis_cli.io.activation_arrays",
    "ActivationFile": "mitosis_cli.io.activations",
    "ActivationHeader": "mitosis_cli.io.activations",
    "read_activations": "mitosis_cli.io.activation_arrays",
    "save_activations": "mitosis_cli.io.activation_arrays",
    # clones
    "CloneSettings": "mitosis_cli.stages.clones",
    "CloneTables": "mitosis_cli.stages.clones",
    "measure_clones": "mitosis_cli.stages.clones",
    "run_clones": "mitosis_cli.stages.clones",
    "clone_size": "mitosis_cli.analysis.clone_size",
    "fit_clone_growth": "mitosis_cli.analysis.clone_size",
    "fit_excess_error": "mitosis_cli.analysis.clone_size",
    # ensembles
    "EnsembleSettings": "mitosis_cli.stages.ensemble",
    "measure_ensemble": "mitosis_cli.stages.ensemble",
    "summarise_ensemble": "mitosis_cli.stages.ensemble",
    "run_ensemble": "mitosis_cli.stages.ensemble",
    # training, extraction, report, sweeps, demo
    "TrainConfig": "mitosis_cli.training.config",
    "TrainSettings": "mitosis_cli.stages.train",
    "run_train": "mitosis_cli.stages.train",
    "ExtractSettings": "mitosis_cli.stages.extract",
    "run_extract": "mitosis_cli.stages.extract",
    "ImportSettings": "mitosis_cli.stages.importing",
    "run_import": "mitosis_cli.stages.importing",
    "ReportSettings": "mitosis_cli.stages.report",
    "run_report": "mitosis_cli.stages.report",
    "Grid": "mitosis_cli.stages.sweep",
    "plan": "mitosis_cli.stages.sweep",
    "run_steps": "mitosis_cli.stages.sweep",
    "DemoSettings": "mitosis_cli.stages.demo",
    "run_demo": "mitosis_cli.stages.demo",
    "Progress": "mitosis_cli.stages.base",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'mitosis_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
