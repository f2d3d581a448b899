"""Code: functions for a shop's code base, tested in the sandbox against hidden unit tests.

The data path, one module each: :mod:`~codrl.envs.code.world` (worlds: the generated ``house.py``
and its hidden conventions), :mod:`~codrl.envs.code.tasks` (task templates, hidden test inputs,
the host-side reference), :mod:`~codrl.envs.code.submission` (reading the code out of a reply),
:mod:`~codrl.envs.code.driver` (the program run in the sandbox and the parsing of its result lines),
:mod:`~codrl.envs.code.report` (grading on the host and the test report) and
:mod:`~codrl.envs.code.env` (the environment and its episodes).
"""

from __future__ import annotations

from codrl.envs.code.driver import Limits, run_driver
from codrl.envs.code.env import CodeEnv, CodeEpisode
from codrl.envs.code.report import Expected, Grade, TestCase, format_report, grade
from codrl.envs.code.submission import CodeSubmission, extract_code
from codrl.envs.code.tasks import TEMPLATE_NAMES, TEMPLATES

__all__ = ["TEMPLATES", "TEMPLATE_NAMES", "CodeEnv", "CodeEpisode", "CodeSubmission", "Expected", "Grade", "Limits",
           "TestCase", "extract_code", "format_report", "grade", "run_driver"]
