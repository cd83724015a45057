"""Running a config: the pipeline, the run folder and its checkpoints, evaluation, inference."""
