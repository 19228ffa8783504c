"""Math-Verify 0/1 reward for verl (reward.custom_reward_function.path points at this file).

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` for every response.
Needs ``pip install math-verify``. verl's helper runs the check in a subprocess pool with a timeout,
so a pathological expression costs a zero reward instead of a hung worker.
"""

from verl.utils.reward_score import math_verify


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """1.0 if the response's final answer is mathematically equal to ``ground_truth``, else 0.0."""
    return float(math_verify.compute_score(solution_str, str(ground_truth)))
