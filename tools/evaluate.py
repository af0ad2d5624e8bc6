"""Run lm-evaluation-harness offline on a checkpoint or an exported model: the same command as
``python -m megatron_hds.evaluation.downstream`` (see there for the flags).

    python tools/evaluate.py --load ckpt --tasks my_task --include-path tasks/
"""
from megatron_hds.evaluation.downstream import cli

if __name__ == "__main__":
    cli()
