"""Domain slugs and manifest loading (relative paths, validation)."""

import json
import os
import shutil

import pytest

from megatron_hds.data.manifest import domain_slug, load_manifest


@pytest.mark.parametrize(
    "name,slug",
    [
        ("Pile-CC", "pile_cc"),
        ("Wikipedia (en)", "wikipedia_en"),
        ("Gutenberg (PG-19)", "gutenberg_pg_19"),
        ("DM Mathematics", "dm_mathematics"),
        ("***", "domain"),
    ],
)
def test_domain_slug(name, slug):
    assert domain_slug(name) == slug


def test_slug_collision_gets_a_hash_suffix():
    taken = {"pile_cc": "Pile-CC"}
    assert domain_slug("Pile-CC", taken) == "pile_cc"
    other = domain_slug("Pile CC", taken)
    assert other.startswith("pile_cc_") and len(other) == len("pile_cc_") + 8


def _make_manifest(tmp_path, demo_corpus, sp_model):
    import preprocess_data

    prefix = str(tmp_path / "data" / "demo")
    preprocess_data.preprocess(
        preprocess_data.parse_args(
            ["--input", demo_corpus, "--output-prefix", prefix, "--domain-key", "meta.pile_set_name",
             "--tokenizer-model", sp_model, "--append-eod"]
        )
    )
    return prefix + "_manifest.json"


def test_manifest_loads_after_the_directory_moves(tmp_path, demo_corpus, sp_model):
    path = _make_manifest(tmp_path, demo_corpus, sp_model)
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "data"), str(moved))
    manifest = load_manifest(str(moved / "demo_manifest.json"))
    assert manifest.names == sorted(manifest.names) and len(manifest.names) >= 6
    assert sum(manifest.natural_weights) == pytest.approx(1.0)
    for domain in manifest.domains:
        assert domain.prefix.startswith(str(moved)) and os.path.isfile(domain.prefix + ".bin")
        assert domain.quality_path == domain.prefix + ".mtld.npy"
    assert not os.path.exists(path)


def test_manifest_validation_errors(tmp_path, demo_corpus, sp_model):
    path = _make_manifest(tmp_path, demo_corpus, sp_model)
    raw = json.load(open(path))

    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_manifest(str(tmp_path / "nowhere.json"))

    bad = tmp_path / "data" / "bad.json"
    bad.write_text(json.dumps({**raw, "version": 99}))
    with pytest.raises(ValueError, match="version-1"):
        load_manifest(str(bad))

    first = raw["domains"][0]
    os.remove(os.path.join(tmp_path, "data", first["prefix"] + ".idx"))
    with pytest.raises(FileNotFoundError, match=first["name"]):
        load_manifest(path)
    assert load_manifest(path, check_files=False).domains[0].name == first["name"]
