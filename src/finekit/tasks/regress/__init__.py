"""`regress`: a numeric target from a text or a text pair (ratings, scores, similarity).

One folder, one registration line in `finekit.plugins`: the task implements the core
contract (`finekit.core.contracts.Task`) and no optional capability beyond what every
encoder task gets for free (linear-probe-free baselines, retention of the encoder's
embedding geometry, slices, guards, compare's from-scratch twin).
"""

from finekit.core.contracts import register_task
from finekit.tasks.regress.config import RegressConfig
from finekit.tasks.regress.task import RegressTask

register_task("regress", RegressConfig, RegressTask)

__all__ = ["RegressConfig", "RegressTask"]
