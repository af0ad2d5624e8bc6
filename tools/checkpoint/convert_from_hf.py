"""Import a Hugging Face GPT-NeoX (Pythia) or Llama model directory as a megatron_hds checkpoint.

    python tools/checkpoint/convert_from_hf.py --hf-model pythia-160m --save ckpt \\
        --target-tensor-parallel-size 2 --target-pipeline-parallel-size 2

Writes iteration 0 (weights only, no optimizer state) at the chosen TP/PP with the
training run's save protocol, and prints the pretrain flags that build the same model.
"""
import argparse
import logging
import sys


from megatron_hds.checkpoint.hf_model import import_hf_model, pretrain_flags  # noqa: E402

# ModelConfig fields that no pretrain flag sets: the trainer uses these defaults.
_TRAINER_DEFAULTS = {"rotary_base": 10000, "norm_epsilon": 1e-5}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--hf-model", required=True, help="local transformers model directory")
    parser.add_argument("--save", required=True, help="checkpoint directory to write (pretrain's --load)")
    parser.add_argument("--target-tensor-parallel-size", type=int, default=1)
    parser.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--seq-length", type=int, default=None, help="default: max_position_embeddings")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                        help="as in pretrain: the vocabulary is padded to a multiple of this times TP")
    return parser.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    config, written, tokenizer = import_hf_model(args.hf_model, args.save, args.target_tensor_parallel_size,
                                      args.target_pipeline_parallel_size, args.seq_length,
                                      args.make_vocab_size_divisible_by)
    print(f"wrote {written}")
    print("train from it with: --load", args.save, "--tensor-model-parallel-size", args.target_tensor_parallel_size,
          "--pipeline-model-parallel-size", args.target_pipeline_parallel_size, *pretrain_flags(config))
    if tokenizer:
        print(f"its tokenizer ({tokenizer['tokenizer_type']}) was copied to {tokenizer['tokenizer_model']}: "
              f"tokenize the training data with it (tools/preprocess_data.py --tokenizer-type "
              f"{tokenizer['tokenizer_type']} --tokenizer-model {tokenizer['tokenizer_model']})")
    for field, default in _TRAINER_DEFAULTS.items():
        if getattr(config, field) != default:
            print(f"WARNING: the model has {field}={getattr(config, field)}, which no pretrain flag sets "
                  f"(the trainer uses {default})")
    return config, written


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"convert_from_hf: error: {error}")
