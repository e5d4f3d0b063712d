"""From a started task to a `Job`: placeholders filled, paths named, environment set.

Results flow on through here too: `{result:ID}` and `{results:PHASE}` read the results
of earlier tasks, and each phase's results are written to results-PHASE.md when it ends.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from . import _templates as tpl
from ._executors.base import InstanceSpec, Job, TaskContext
from ._prepare import Prepared

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(task_id: str) -> str:
    """A file name for a task id; ids that needed changing get a hash so they stay unique."""
    clean = _UNSAFE.sub("_", task_id)[:80]
    if clean == task_id and not clean.startswith("."):
        return clean
    return f"{clean}-{hashlib.sha1(task_id.encode()).hexdigest()[:8]}"  # noqa: S324


def _no_placeholders(ph: tpl.Placeholder) -> str:
    """The lookup of a prompt with no placeholder, which `render` never calls."""
    raise AssertionError(f"unexpected placeholder {ph}")


class Jobs:
    """Makes the jobs of one run, and keeps the results later prompts may read."""

    def __init__(
        self, prepared: Prepared, run_id: str, run_dir: Path, results: Mapping[str, str]
    ) -> None:
        self.p = prepared
        self.plan = prepared.plan
        self.run_id = run_id
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.result_dir = run_dir / "results"
        self.results: dict[str, str] = dict(results)
        self._log_s = str(self.log_dir)
        self._names: dict[str, str] = {}  # safe_name per task: a regex, asked twice a start

    def log_files(self, task: str, attempt: int) -> tuple[str, str]:
        """The attempt's stdout and stderr log paths as the journal stores them: the same
        text as `str(job.stdout_path)`, made without formatting a Path (~10,000
        instructions each, where an in-process task's whole bookkeeping is ~300,000)."""
        stem = self._stem(task, attempt)
        return f"{self._log_s}/{stem}.out", f"{self._log_s}/{stem}.err"

    def instance(self, name: str, specialist: str) -> InstanceSpec:
        spec = self.plan.specialists[specialist]
        return InstanceSpec(name, specialist, dict(spec.env), dict(spec.resources))

    def _stem(self, task_id: str, attempt: int) -> str:
        """An attempt's file name without suffix: one path component (no "/", never ".")."""
        name = self._names.get(task_id)
        if name is None:
            name = self._names[task_id] = safe_name(task_id)
        return f"{name}.{attempt}" if attempt > 1 else name

    def make(
        self,
        task: str,
        instance: str,
        attempt: int,
        workdir: Path,
        resume_session: str | None = None,
    ) -> Job:
        spec = self.plan.by_id[task]
        stem = self._stem(spec.id, attempt)
        stdout_path = self.log_dir / f"{stem}.out"
        specialist = self.plan.specialists[spec.specialist]
        lookup: tpl.Lookup = _no_placeholders
        prompt_only = all(isinstance(p, str) for p in spec.prompt)
        values: dict[str, str] = {}
        if not prompt_only or specialist.argv is not None:  # an in-process task needs none
            values = {
                "task_id": spec.id,
                "instance": instance,
                "attempt": str(attempt),
                "workdir": str(workdir),
                "specialist": spec.specialist,
                "scope": spec.scope or "",
                "phase": spec.phase,
            }
        if not prompt_only:
            # Most prompts hold no placeholder: only those pay for the lookup's tables.
            listed = {"files": " ".join(spec.files), "reads": " ".join(spec.reads)}
            lookup = tpl.simple_lookup({**values, **listed}, self._ref)
        prompt = tpl.render(spec.prompt, lookup)
        ctx = TaskContext(
            run_id=self.run_id,
            task_id=spec.id,
            specialist=spec.specialist,
            phase=spec.phase,
            scope=spec.scope,
            prompt=prompt,
            files=spec.files,
            instance=instance,
            attempt=attempt,
            root=self.p.root,
            workdir=workdir,
            result_path=self.result_dir / f"{stem}.result",
            log_path=stdout_path,
            reads=spec.reads,
        )
        argv: tuple[str, ...] | None = None
        if specialist.argv is not None:
            full = tpl.simple_lookup({**values, "prompt": prompt}, self._ref)
            argv = tuple(tpl.render_argv(specialist.argv, full, spec.files, spec.reads))
        elif specialist.shell_script is not None:
            argv = ("/bin/sh", "-c", specialist.shell_script, "guildrun", *spec.files)
        return Job(
            context=ctx,
            timeout=spec.timeout or specialist.timeout or self.p.settings.timeout,
            kill_grace=self.p.settings.kill_grace,
            stdout_path=stdout_path,
            stderr_path=self.log_dir / f"{stem}.err",
            argv=argv,
            env=ctx.env() if argv is not None or specialist.agent is not None else {},
            agent=specialist.agent,
            resume_session=resume_session if specialist.agent is not None else None,
            python=specialist.python,
        )

    def _ref(self, ph: tpl.Placeholder) -> str:
        if ph.name == "result":
            return self.results.get(ph.arg or "", "")
        return self.phase_text(ph.arg or "")

    def phase_text(self, phase: str) -> str:
        blocks = []
        for t in self.plan.tasks:
            if t.phase == phase and t.id in self.results:
                blocks.append(f"## {t.id}\n\n{self.results[t.id].rstrip()}\n")
        return "\n".join(blocks)

    def write_phase_results(self, phase: str) -> Path:
        path = self.run_dir / f"results-{phase}.md"
        body = self.phase_text(phase)
        path.write_text(
            f"# Results of the {phase} phase ({self.run_id})\n\n{body}", encoding="utf-8"
        )
        return path
