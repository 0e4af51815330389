"""The pipeline's stages as plain functions: typed settings in, result objects out (the Python API).

One module per stage: `train`, `extract` (and merge), `clones`, `ensemble`, `report`, `sweep` (the one
planner, with `slurm` for its job scripts) and `demo`. Each stage validates its settings and inputs,
decides by the output's stamp whether to skip, write or refuse, takes the output lock, writes its
files atomically, and reports progress through `on_step` (`base.Progress`). Nothing here prints.
The submodules are not imported here, so importing one stage stays cheap.
"""
