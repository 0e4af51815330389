"""The report's figures: each function takes tables (Frames) and returns a matplotlib Figure.

Nothing here reads or writes files, and nothing fits: a number the tables hold (clone size, the c of
the excess error, the growth of the number of clones) is drawn as it is, and where a table lacks one
the clones stage's own estimator (`mitosis_cli.analysis.clone_size`) is applied to the table's
numbers, the legend saying so. Data artists carry a `gid` naming what they show ("chunk_error:test",
"clone-size", ...) so tests, and anyone post-editing an SVG, can find them.

One module per family: `network` (the paper's panels for one network), `across` (every width on shared
axes, with the collapse diagnostics), `widths` (clones against width), `imbalance` (Information
Imbalance), `ensembles`, `training`; `draw` holds their shared helpers
and `mitosis_cli.report.select` the row selection. Notation follows Doimo et al. (NeurIPS 2022): W is
the width of the last hidden layer, w_c the size of a chunk of its neurons, w_c* the clone size,
error_inf the test error of a large ensemble of full networks.
"""

from mitosis_cli.report.figures.across import across_widths
from mitosis_cli.report.figures.ensembles import ensemble_accuracy
from mitosis_cli.report.figures.imbalance import information_imbalance
from mitosis_cli.report.figures.network import network_panels
from mitosis_cli.report.figures.training import metrics_over_training, training_curves
from mitosis_cli.report.figures.widths import clones_vs_width

__all__ = ["across_widths", "clones_vs_width", "ensemble_accuracy", "information_imbalance", "metrics_over_training",
           "network_panels", "training_curves"]
