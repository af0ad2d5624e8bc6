"""The run's domains and their held-out data: validation and test datasets preprocessed apart
(--valid-data-manifest, --test-data-manifest) and a held-out sample order that does not
depend on the training seed (--eval-seed)."""

import json
import shutil

import numpy as np
import pytest

from megatron_hds.config import DataConfig
from megatron_hds.data.domains import resolve_domains
from megatron_hds.data.gpt_dataset import build_domain_datasets


@pytest.fixture(scope="module")
def held_out_manifest(demo_corpus, sp_model, tmp_path_factory) -> str:
    """The demo corpus preprocessed a second time, standing in for a separately built validation set."""
    import preprocess_data

    prefix = str(tmp_path_factory.mktemp("held_out") / "demo")
    preprocess_data.preprocess(preprocess_data.parse_args(
        ["--input", demo_corpus, "--output-prefix", prefix, "--domain-key", "meta.pile_set_name",
         "--tokenizer-model", sp_model, "--append-eod"]))
    return prefix + "_manifest.json"


def _datasets(domains, seed, eval_seed=None, split="90,5,5"):
    return build_domain_datasets(domains.prefixes, domains.names, split, 32, seed,
                                 held_out_prefixes=domains.held_out_prefixes, eval_seed=eval_seed)


def _samples(datasets, split):
    return [np.stack([d[i] for i in range(min(len(d), 8))]) for d in datasets[split]]


def test_separate_validation_data_is_used_whole_and_training_keeps_its_documents(demo_manifest, held_out_manifest):
    domains = resolve_domains(DataConfig(data_manifest=demo_manifest, valid_data_manifest=held_out_manifest))
    assert list(domains.held_out_prefixes) == ["valid"]
    datasets = _datasets(domains, seed=1)
    for name, train, valid, test in zip(domains.names, datasets["train"], datasets["valid"], datasets["test"]):
        documents = train.indexed.num_documents
        assert valid.indexed.path_prefix.startswith(held_out_manifest.rsplit("_", 1)[0]), name
        assert valid.document_range == (0, valid.indexed.num_documents)
        # --split 90,5,5 without its valid share: the training data keeps 90/95 of its documents.
        assert train.document_range == (0, round(documents * 90 / 95))
        assert test.document_range == (train.document_range[1], documents)


def test_eval_seed_fixes_the_held_out_samples_across_training_seeds(demo_manifest, held_out_manifest):
    domains = resolve_domains(DataConfig(data_manifest=demo_manifest, valid_data_manifest=held_out_manifest,
                                         test_data_manifest=held_out_manifest))
    a, b = _datasets(domains, seed=1, eval_seed=7), _datasets(domains, seed=2, eval_seed=7)
    for split in ("valid", "test"):
        assert all(np.array_equal(x, y) for x, y in zip(_samples(a, split), _samples(b, split)))
    assert not all(np.array_equal(x, y) for x, y in zip(_samples(a, "train"), _samples(b, "train")))
    c = _datasets(domains, seed=2)  # without --eval-seed the training seed orders the held-out samples too
    assert not all(np.array_equal(x, y) for x, y in zip(_samples(a, "valid"), _samples(c, "valid")))
    assert all(t.document_range == (0, t.indexed.num_documents) for t in a["train"])  # both splits apart


def test_held_out_manifests_must_match_the_domains_and_the_tokenizer(demo_manifest, held_out_manifest, tmp_path):
    other = json.load(open(held_out_manifest))
    directory = tmp_path / "copy"
    shutil.copytree(held_out_manifest.rsplit("/", 1)[0], directory)
    path = directory / held_out_manifest.rsplit("/", 1)[1]
    renamed = dict(other, domains=[dict(d, name=d["name"] + "X") if i == 0 else d
                                   for i, d in enumerate(other["domains"])])
    path.write_text(json.dumps(renamed))
    with pytest.raises(ValueError, match="--valid-data-manifest .* has the domains"):
        resolve_domains(DataConfig(data_manifest=demo_manifest, valid_data_manifest=str(path)))
    path.write_text(json.dumps(dict(other, tokenizer=dict(other["tokenizer"], sha256="0" * 64))))
    with pytest.raises(ValueError, match="--test-data-manifest .* another tokenizer"):
        resolve_domains(DataConfig(data_manifest=demo_manifest, test_data_manifest=str(path)))
