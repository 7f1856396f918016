"""Running a study: the study model and its validation, run keys, scheduling, execution, kernels, the Dask
cluster and the progress display."""
