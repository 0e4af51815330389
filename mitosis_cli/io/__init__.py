"""File formats: the HDF5 activation file, the Parquet tables, checkpoints; atomic writes."""
