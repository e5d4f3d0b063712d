"""Worktree mode: a git checkout per instance, patches integrated onto a run branch.

One module per concept: `_layout` (names and places), `_base` (the run's base commit),
`_instances` (instance checkouts), `_patch` (a task's effect as a commit), `_guard`
(git's own files a task may not touch), `_integrate` (the integration branch, crash-safe),
`_gates` (gates and bisection), `_apply` (into the user's branch), `_set` (the facade).
"""

from ._apply import Applied as Applied
from ._base import RunBase as RunBase
from ._gates import Bisection as Bisection
from ._gates import Culprit as Culprit
from ._gates import Gate as Gate
from ._gates import GateResult as GateResult
from ._guard import Violation as Violation
from ._instances import Instance as Instance
from ._integrate import Integration as Integration
from ._integrate import Recovery as Recovery
from ._patch import Change as Change
from ._patch import TaskPatch as TaskPatch
from ._set import Cleaned as Cleaned
from ._set import WorktreeSet as WorktreeSet
