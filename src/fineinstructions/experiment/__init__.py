"""The paper's token-for-token comparison as one resumable command (`fineinstructions experiment`)."""

from fineinstructions.experiment.config import ExperimentConfig
from fineinstructions.experiment.run import Experiment, run_experiment

__all__ = ["Experiment", "ExperimentConfig", "run_experiment"]
