"""Run lm-evaluation-harness on an exported model or on a checkpoint, offline, and write the results.

    python tools/evaluate.py --load ckpt --tasks my_task --include-path tasks/   # exports the latest checkpoint
    python tools/evaluate.py --hf-model ckpt/hf --tasks my_task --include-path tasks/

With --load the model is exported to <load>/downstream_eval/iter_XXXXXXX/hf and the
results go to lm_eval_results.json beside it; with --hf-model they go into that
directory; --output names another file. Datasets and models are read offline unless --online.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--load", help="checkpoint directory: export it (latest or --iteration), then evaluate")
    source.add_argument("--hf-model", help="a transformers model directory (tools/checkpoint/convert_to_hf.py)")
    parser.add_argument("--iteration", type=int, default=None, help="with --load (default: latest)")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    parser.add_argument("--include-path", default=None, help="directory of local lm-eval task YAMLs")
    parser.add_argument("--output", default=None, help="results JSON (default: lm_eval_results.json beside the model)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--online", action="store_true", help="allow downloads of datasets/models from the Hub")
    args = parser.parse_args(argv)
    if args.iteration is not None and args.load is None:
        parser.error("--iteration goes with --load")
    return args


def main(argv=None) -> str:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    from megatron_hds.training import downstream_eval

    if not args.online:  # must be set before datasets / huggingface_hub are imported
        os.environ.update(downstream_eval.OFFLINE_ENV)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    options = dict(include_path=args.include_path, batch_size=args.batch_size, limit=args.limit,
                   num_fewshot=args.num_fewshot, device=args.device)
    if args.load is not None:
        path = downstream_eval.evaluate_checkpoint(args.load, tasks, args.iteration, args.output, **options)
    else:
        path = args.output or os.path.join(args.hf_model, downstream_eval.RESULTS_FILENAME)
        downstream_eval.run_lm_eval(args.hf_model, tasks, path, **options)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"evaluate: error: {error}")
