"""Launch DDPM training (the model a SIDE audit targets): ``python training/train_dpm.py`` or ``accelerate launch``.

The flags and the loop live in `diffusers_side.training.dpm`. See ``--help`` for the flags.

Example:

```bash
python training/train_dpm.py --dataset_name default --output_dir ddpm-digits \\
    --train_batch_size 64 --max_train_steps 20000 --learning_rate 3e-4 --checkpointing_steps 2000 \\
    --resume_from_checkpoint latest
accelerate launch --cpu --num_processes 2 training/train_dpm.py --dataset_name default --output_dir ddpm-digits
```
"""

from diffusers_side.training.dpm import parse_args, train_dpm


def main() -> None:
    train_dpm(parse_args())


if __name__ == "__main__":
    main()
