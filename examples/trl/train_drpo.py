"""DRPO with TRL: GRPOTrainer sampling and rewards, our loss.

Every GRPOConfig flag works, plus --drpo_loss and --drpo_loss_kwargs. One GPU, vLLM colocated:

    pip install "drpo[trl]" math-verify vllm
    accelerate launch examples/trl/train_drpo.py --output_dir runs/trl-drpo \
        --drpo_loss drpo --loss_type dr_grpo \
        --use_vllm --vllm_mode colocate --steps_per_generation 4 --bf16

DRPO runs at the recommended delta (drpo.losses.DRPO_DELTA); --drpo_loss_kwargs '{"delta": 0.15}' changes it.
With vLLM, mu is vLLM's sampling log-prob of each token; without it, mu is TRL's pi_old
(computed when one generation batch feeds several optimizer steps: steps_per_generation >
gradient_accumulation_steps, or num_iterations > 1). Our metrics (loss/*, ratio/*, shift/*)
appear in TRL's logs next to its own.
"""

from dataclasses import dataclass

from datasets import load_dataset
from transformers import HfArgumentParser
from trl.rewards import accuracy_reward

from drpo.integrations.trl import DRPOConfig, DRPOTrainer


@dataclass
class ScriptArguments:
    model: str = "Qwen/Qwen2.5-0.5B-Instruct"
    dataset: str = "trl-lib/DeepMath-103K"  # conversational prompts with a "solution" column


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, DRPOConfig)).parse_args_into_dataclasses()
    dataset = load_dataset(script.dataset, split="train")
    # accuracy_reward: math-verify equality of the boxed answer with the solution (0 or 1)
    trainer = DRPOTrainer(model=script.model, reward_funcs=accuracy_reward, args=args, train_dataset=dataset)
    trainer.train()


if __name__ == "__main__":
    main()
