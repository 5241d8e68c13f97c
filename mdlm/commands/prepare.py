"""`mdlm prepare`: split, tokenize and pack the corpus of a profile into data/prepared/<profile>/."""

from __future__ import annotations

from mdlm.data import prepare
from mdlm.paths import prepared_dir
from mdlm.profiles import add_profile_argument, load_profile


def add_arguments(parser) -> None:
    add_profile_argument(parser)


def main(args) -> int:
    profile = load_profile(args.profile)
    meta = prepare(profile.name, profile.data, profile.tokenizer)
    tok = meta["tokenizer"]
    print(f"{meta['profile']}: tokenizer {tok['name']} (vocab {tok['vocab_size']}), seq_len {meta['seq_len']}, "
          f"{meta['dtype']} -> {prepared_dir(profile.name)}")
    for split, st in meta["splits"].items():
        per = ", ".join(f"{k} {v['documents']}/{v['tokens']}" for k, v in st["sources"].items())
        print(f"  {split:5} docs {st['documents']:6}  tokens {st['tokens']:9}  rows {st['rows']:7}  ({per})")
    return 0
