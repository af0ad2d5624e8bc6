#!/usr/bin/env python3
"""Train a SentencePiece model from JSONL text (.jsonl, .jsonl.zst, .jsonl.gz).

    python tools/train_tokenizer.py --input demo.jsonl.zst --model-prefix tok --vocab-size 8000

writes tok.model (and tok.vocab), usable as --tokenizer-model with
--tokenizer-type GPTSentencePieceTokenizer (EOD = id 2).
"""

import argparse
import time


from megatron_hds.data.jsonl_input import MalformedLine, expand_inputs, iter_lines, parse_line
from megatron_hds.data.tokenizer import train_sentencepiece


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="JSONL files or globs (.jsonl, .jsonl.zst, .jsonl.gz)")
    parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--json-key", default="text", help="key of the text in each JSON line (default: text)")
    parser.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    parser.add_argument("--character-coverage", type=float, default=0.9999)
    parser.add_argument("--max-documents", type=int, default=None, help="train on at most this many documents")
    parser.add_argument(
        "--input-sentence-size", type=int, default=2_000_000, help="SentencePiece samples at most this many pieces"
    )
    parser.add_argument("--num-threads", type=int, default=None)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    paths = expand_inputs(args.input)
    stats = {"documents": 0, "skipped": 0}

    def texts():
        for path in paths:
            for line in iter_lines(path):
                if args.max_documents is not None and stats["documents"] >= args.max_documents:
                    return
                try:
                    (text,), _ = parse_line(line, (args.json_key,), None)
                except MalformedLine:
                    stats["skipped"] += 1
                    continue
                stats["documents"] += 1
                yield text

    start = time.time()
    model_path = train_sentencepiece(
        texts(),
        args.model_prefix,
        args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size,
        num_threads=args.num_threads,
    )
    print(
        f"wrote {model_path}: vocab {args.vocab_size}, trained on {stats['documents']} documents "
        f"({stats['skipped']} malformed lines skipped) in {time.time() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
