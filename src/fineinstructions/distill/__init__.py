"""Distil one stage (templatize or instantiate) into a small student model: a teacher answers the stage's
prompts, the answers the stage accepts become supervised examples, and the student is fine-tuned on them
with the loss on the completion only. See `run.distill` for the whole run and its output folder."""

from fineinstructions.distill.examples import (
    STAGES,
    STUDENT_PROMPT_VERSIONS,
    DistillError,
    Example,
    TeacherReport,
    generate_examples,
    load_inputs,
    read_examples,
    write_examples,
)
from fineinstructions.distill.run import DistillSettings, distill, evaluate_stage, student_backend

__all__ = ["STAGES", "STUDENT_PROMPT_VERSIONS", "DistillError", "DistillSettings", "Example", "TeacherReport",
           "distill", "evaluate_stage", "generate_examples", "load_inputs", "read_examples", "student_backend",
           "write_examples"]
