"""Stage 0 at scale: resident evaluators score thousands of candidates, their latency predicted, their structure
kept within the budget by construction."""
from autoprune.searching.stage0.budget import Budget, Limit
from autoprune.searching.stage0.engine import Stage0Engine
from autoprune.searching.stage0.evaluator import Scored, Stage0Evaluator, Stage0Settings
from autoprune.searching.stage0.pool import EvaluatorPool

__all__ = ["Budget", "EvaluatorPool", "Limit", "Scored", "Stage0Engine", "Stage0Evaluator", "Stage0Settings"]
