"""TOFU fixture check (in-process, no server): truth ratios on the forget set for the embedded model, the `tofu`
fixture and its retain-only twin, and TOFU forget quality against the twin. A fixture worth evaluating the guard
on knows its forget set: its forget quality is far below 1."""

from __future__ import annotations

import time

from guard_service.config import Settings
from guard_service.evaluation.suites.base import Check, Suite, SuiteResult
from guard_service.evaluation.truth_ratio import fixture_report

REFERENCE = "tofu-retain"


class FixtureSuite(Suite):
    name = "fixture"

    async def run(self, client=None) -> SuiteResult:
        began = time.monotonic()
        base = Settings().base_model_path()
        models = {"embedded": base, **{f: Settings(fixture=f).resolved_model_path() for f in ("tofu", REFERENCE)}}
        report = fixture_report(self.data, models, REFERENCE, self.options.limit)
        metrics = {f"{k}.{name}": v for name, r in report.items() for k, v in r.items()}
        quality = report["tofu"][f"forget_quality_vs_{REFERENCE}"]
        return SuiteResult(
            suite=self.name, model="embedded / tofu / tofu-retain", metrics=metrics, seconds=time.monotonic() - began,
            checks=[Check(name="fixture forget quality vs retain-only (low = it learned the forget set)",
                          value=quality, op="<=", target=0.05)],
            notes=["Teacher-forced probabilities of the paraphrased vs the 5 perturbed answers per forget05 question "
                   "(TOFU truth ratio); forget quality = KS-test p-value against the retain-only twin. A "
                   "generation-time guard does not change these: they describe what each model knows."])
