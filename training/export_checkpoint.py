"""Export a ``checkpoint-N`` of ``training/train_dpm.py`` as a pipeline folder with a chosen sampler.

The work is done by `diffusers_side.training.export.export_dpm_checkpoint` (EMA weights, the run's own
noise schedule, the scheduler built with ``from_config``; safetensors).

Example:

```bash
python training/export_checkpoint.py --checkpoint /work/outputs/heldout/train/checkpoint-4000 \\
    --output /work/outputs/heldout/model --scheduler dpm-solver
```
"""

import argparse

from diffusers_side.utils.arg_types import SCHEDULER_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python training/export_checkpoint.py",
        description="Save the EMA weights of a train_dpm.py checkpoint as a DDPMPipeline folder with a chosen scheduler.",
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint-N folder of a training/train_dpm.py run")
    parser.add_argument("--output", required=True, help="the pipeline folder to write (replaced as a whole)")
    parser.add_argument(
        "--scheduler", default="ddpm", choices=SCHEDULER_NAMES, help="the scheduler saved with the pipeline (default: ddpm)"
    )
    args = parser.parse_args()
    from diffusers_side.training.export import export_dpm_checkpoint

    try:
        export_dpm_checkpoint(args.checkpoint, args.output, args.scheduler)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
