"""The evaluation suites, by the name `guard-service eval --suite` takes."""

from guard_service.evaluation.suites.base import EvalOptions, Suite, SuiteResult
from guard_service.evaluation.suites.fixture import FixtureSuite
from guard_service.evaluation.suites.harry_potter import HarryPotterSuite
from guard_service.evaluation.suites.muse import MuseSuite
from guard_service.evaluation.suites.probes import ProbesSuite
from guard_service.evaluation.suites.tofu import TofuSuite

SUITES: dict[str, type[Suite]] = {s.name: s for s in (TofuSuite, MuseSuite, HarryPotterSuite, ProbesSuite,
                                                       FixtureSuite)}

__all__ = ["SUITES", "EvalOptions", "Suite", "SuiteResult"]
