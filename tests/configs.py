"""Override lists that several test modules run with: ``from configs import CHEAP``.

A module whose settings differ for a reason keeps its own list, with the reason next to it (test_trainer.py's
TINY: the default base model; test_compare.py's TINY: a sweep with a warm-up; test_mismatch_run.py's TINY:
dump sizes its assertions count; test_policy.py's WARMED: a base model whose weights differ from a fresh one).
"""

# For what needs no competent model (plumbing, determinism, resuming, guards, refusals): the tiny model without
# warm-up, small batches, 8 evaluation prompts with 2 samples each (so sampled evaluation is part of what
# determinism and resumption are checked on), an evaluation every 4 steps, no TensorBoard files.
CHEAP = ["model=tiny", "warmup.steps=0", "warmup.target_accuracy=null", "rollout.prompts=4", "rollout.group_size=4",
         "eval.prompts=8", "eval.samples=2", "eval.every=4", "tensorboard=false"]
