"""The paper's human evaluation: a two-alternative forced-choice study of real photos against a model's outputs.

An observer sees a real photo and a generated image side by side for a fixed time (the paper: 3 s or 5 s) and
answers "Which image would you guess is from a camera?"; the fool rate is the share of trials in which the generated
image is picked. ``create`` pairs the images and writes a study database (``db``), ``design`` decides who sees what,
``sessions`` and ``server`` run the observers' page, ``report`` computes the fool rates with their intervals.
"""

from .create import StudyOptions, create_study
from .report import study_report, write_report

__all__ = ["StudyOptions", "create_study", "study_report", "write_report"]
