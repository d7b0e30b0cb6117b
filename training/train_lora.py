"""Launch SIDE's LoRA fine-tuning: ``python training/train_lora.py`` or ``accelerate launch training/train_lora.py``.

The flags and the loop live in `diffusers_side.training.lora` (``side train-lora`` runs the same function).
See ``--help`` for the flags.

Example:

```bash
python training/train_lora.py --pretrained_model_name_or_path default --train_data_dir side-demo/labels \\
    --output_dir side-demo/lora-side --rank 8 --max_train_steps 1500
accelerate launch --num_processes 2 training/train_lora.py --train_data_dir side-demo/labels \\
    --output_dir side-demo/lora-side --resume_from_checkpoint latest
```
"""

from diffusers_side.training.lora import parse_args, train_lora


def main() -> None:
    train_lora(parse_args())


if __name__ == "__main__":
    main()
