#!/usr/bin/env bash
# DRPO on Qwen3-4B-Base with verl, one node of 8 GPUs: the paper's recipe.
#   rollout 64 prompts x 8 samples; lr 1e-6; 4 updates per rollout, anchored on the rollout log-probs mu;
#   seq-mean-token-sum-norm over 8192; advantages not divided by the group std; math-verify reward;
#   AIME 2024 avg@16 every 10 steps.
# Needs: pip install "drpo[verl]" math-verify, plus vLLM for verl's rollout (see README.md, "Scaling out").
# Usage:  bash examples/verl/run_drpo_qwen3_4b_base.sh [more hydra overrides]   (DELTA=12.5: the paper's setting)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA_DIR="${DATA_DIR:-$HOME/data/drpo}"
TRAIN_FILE="${TRAIN_FILE:-$DATA_DIR/dapo-math-17k.parquet}"
VAL_FILE="${VAL_FILE:-$DATA_DIR/aime-2024.parquet}"
MODEL="${MODEL:-Qwen/Qwen3-4B-Base}"
# delta: drpo's recommended value (drpo.losses.DRPO_DELTA) unless DELTA is set; 12.5 is the paper's stated
# setting, a pull that cannot bind (docs/method.md)
DELTA="${DELTA:-$(python -c 'from drpo.losses import DRPO_DELTA; print(DRPO_DELTA)')}"
NGPUS="${NGPUS:-8}"

# The datasets verl's DAPO recipe uses, fetched once (needs huggingface_hub's `hf` CLI, installed with verl).
if [[ ! -f "$TRAIN_FILE" || ! -f "$VAL_FILE" ]]; then
    mkdir -p "$DATA_DIR"
    hf download BytedTsinghua-SIA/DAPO-Math-17k --repo-type dataset --local-dir "$DATA_DIR/DAPO-Math-17k"
    hf download BytedTsinghua-SIA/AIME-2024 --repo-type dataset --local-dir "$DATA_DIR/AIME-2024"
    cp "$(find "$DATA_DIR/DAPO-Math-17k" -name '*.parquet' | head -n 1)" "$TRAIN_FILE"
    cp "$(find "$DATA_DIR/AIME-2024" -name '*.parquet' | head -n 1)" "$VAL_FILE"
fi

# Fail here, not an hour into the run, if the plugin is missing or TRL would break verl's engine.
python -c "import sys, verl; from verl.trainer.ppo.core_algos import get_policy_loss_fn; get_policy_loss_fn('drpo')
from drpo.integrations.verl import trl_conflict; sys.exit(trl_conflict())"

python -m verl.trainer.main_ppo \
    --config-path "$HERE" --config-name drpo_qwen3_4b_base \
    data.train_files="$TRAIN_FILE" \
    data.val_files="$VAL_FILE" \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.clip_ratio="$DELTA" \
    reward.custom_reward_function.path="$HERE/math_verify_reward.py" \
    trainer.n_gpus_per_node="$NGPUS" \
    trainer.experiment_name="qwen3-4b-base-drpo-delta$DELTA" \
    "$@"
