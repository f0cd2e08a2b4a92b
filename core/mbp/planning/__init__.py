"""Everything that decides a setting a pipeline leaves unset: the data's probe, the planners, and the
settings a run trains with (planned, agreed across processes, or recorded by a checkpoint). Empty, so
that the schema reads ``mbp.planning.constants`` without loading the planners (torch)."""
