"""Export a megatron_hds checkpoint (any TP/PP layout) as a Hugging Face transformers model directory.

    python tools/checkpoint/convert_to_hf.py --load ckpt --output ckpt/hf

GPT-NeoX/Pythia shapes become GPTNeoXForCausalLM, Llama shapes LlamaForCausalLM; the
vocabulary padding is removed; the tokenizer is the run's (a SentencePiece model, or a
HuggingFaceTokenizer's tokenizer.json) unless --tokenizer-model says otherwise. The directory appears only once complete.
"""
import argparse
import logging
import sys


from megatron_hds.checkpoint.hf_model import export_checkpoint  # noqa: E402
from megatron_hds.precision import DTYPES  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--load", required=True, help="checkpoint directory (the training run's --save)")
    parser.add_argument("--iteration", type=int, default=None, help="default: latest_checkpointed_iteration.txt")
    parser.add_argument("--output", required=True, help="the Hugging Face model directory to write")
    parser.add_argument("--tokenizer-model", default=None,
                        help="SentencePiece model, or a tokenizer.json / its directory (default: the run's)")
    parser.add_argument("--tokenizer-type", default=None,
                        choices=["GPTSentencePieceTokenizer", "Llama2Tokenizer", "HuggingFaceTokenizer"],
                        help="default: the run's")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the written weights")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = export_checkpoint(args.load, args.output, args.iteration, args.tokenizer_model, args.tokenizer_type,
                            DTYPES[args.dtype])
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"convert_to_hf: error: {error}")
