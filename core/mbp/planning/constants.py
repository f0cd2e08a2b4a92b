"""The numbers a run plans with where its pipeline leaves a setting unset.

The planner (``mbp.planning.plan`` and the modules it calls) uses them, and the pipeline's schema
(``mbp.config.schema``) describes them from here, so a description never restates a number that has
changed. This module imports nothing of mbp: the schema reads it without loading the planner (torch).
"""

from __future__ import annotations

DEFAULT_PATCH = 8
"""The byte-level stage's patch where the pipeline gives none and no training data plans one."""
DEFAULT_BATCH = 8
"""Rows a step for a head that names none: answer heads' rows pack several short samples each, and 8
rows (a few dozen samples) make a steady gradient for a few thousand labelled samples."""
SHORTEST_ROW = 1024
"""A planned row holds at least about this many tokens (``mbp.planning.rows``), so that short samples
still pack several to a row."""
ROW_COVERAGE = 0.99
"""The share of the training samples a planned row holds whole (``mbp.planning.rows``)."""
PASSES = 30
"""Passes over the training set. Letter glyphs went 0.910 / 0.948 / 0.981 at 2.5 / 3.3 / 5 passes, but spoken
letter names (26 classes) were 0.811 / 0.876 / 0.895 at 6 / 9 / 12 passes: 6 was too few for the harder
set, and the best checkpoint is kept, so extra passes on an easy set cost minutes, not accuracy. A pass of
an answer head costs half a full one (``ThinningHead`` scores a quarter of the context rows a step), and
the ceiling is time (``mbp.planning.budget.TRAIN_SECONDS``): at 15 passes most sets of the real-data suite
stop after 1-4 minutes on a 2-core Intel Xeon with AMX. At 30 against 15, same machine and seed, held-out
accuracy rises or holds on all but one: letter glyphs 0.980 -> 0.990 (seed 1: 0.995), spoken letters 0.895
-> 0.926, spoken commands 0.929 -> 0.939, spoken digits 0.980 -> 0.983, 8x8 digits 0.906 -> 0.916, digit
glyphs 1.000 -> 0.994, PNG glyphs 0.247 -> 0.260; PNG digits 0.229 -> 0.182, memorised (held-out loss
rising from the second evaluation on, whose 0.205 is the kept best). No run took over 6.2 minutes."""
FEWEST_STEPS = 600
"""A planned run trains at least this many steps, however few ``PASSES`` take (``mbp.planning.plan``)."""
AUGMENT_PASSES = 15
"""Passes over the training set from which a run varies its samples (``mbp.planning.variation``)."""
EVAL_SHARE = 0.25
"""The share of a planned run its evaluations may take (as estimated) before they read a spread subset of
its held-out set instead of all of it (``EvalLoad.fitted``). A test split of 10,000 28x28 images on the
2-core AMD EPYC (fp32: 1,222 of them evaluate in 17-20 s) would take about 140 s an evaluation; four
of them would leave the run under half its minutes to train, and longer than planned."""
EVALUATIONS = 4
"""Evaluations of a run whose pipeline leaves ``train.eval_every`` unset (every quarter of the run)."""
RUN_MINUTES = 9.0
"""A planned run's wall time, evaluation included, where ``train.minutes`` is unset: nine minutes, one
under the ten a run is given, for starting the process, writing checkpoints and a machine whose speed
varies within a run."""
