"""Figures and the HTML/Markdown report, drawn from the Parquet tables of the other stages.

- `inputs`: read the tables, sort them by kind, refuse bad files with one line.
- `select`: pick a network's rows, its curves against chunk size and the summary's per-source numbers.
- `figures`: one module per family of figures, tables in, matplotlib Figure out (no I/O, no own fits).
- `summary`, `html`: the headline numbers and the page / Markdown they are rendered to.
- `build`: which figures the tables support, rendering, the atomic write and the skip-if-unchanged stamp.

Importing `figures` (or `style`) selects matplotlib's non-interactive Agg backend.
"""
