"""Launch SIDE's classifier training: ``python training/train_classifier.py`` or ``accelerate launch``.

The flags and the loop live in `diffusers_side.training.classifier` (``side train-classifier`` runs the
same function). See ``--help`` for the flags.

Example:

```bash
python training/train_classifier.py --pretrained_model_name_or_path default \\
    --train_data_dir side-demo/labels --output_dir side-demo/side-pipeline --max_train_steps 2000
accelerate launch --num_processes 2 training/train_classifier.py --train_data_dir side-demo/labels \\
    --output_dir side-demo/side-pipeline --resume_from_checkpoint latest
```
"""

from diffusers_side.training.classifier import parse_args, train_classifier


def main() -> None:
    train_classifier(parse_args())


if __name__ == "__main__":
    main()
