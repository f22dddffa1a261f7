"""Evaluate trained models: answers to held-out instructions, reference scores, and a judged head-to-head."""

from fineinstructions.evaluation.answers import ModelAnswers, ModelSpec
from fineinstructions.evaluation.heldout import EvalItem, EvaluationInputError, InstructionSet, load_instructions
from fineinstructions.evaluation.judge import aggregate_judgments, judge_head_to_head, parse_verdict
from fineinstructions.evaluation.run import EvaluationSettings, default_judge, evaluate, print_scores

__all__ = ["EvalItem", "EvaluationInputError", "EvaluationSettings", "InstructionSet", "ModelAnswers", "ModelSpec",
           "aggregate_judgments", "default_judge", "evaluate", "judge_head_to_head", "load_instructions",
           "parse_verdict", "print_scores"]
