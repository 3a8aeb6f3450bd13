"""The data layer: corpora, cleaning, token shards, batches, and the text pipeline job.

- `sources`: the named datasets (URL, sha256, licence), `fetch`, `load_documents`, `gpt2_tokenizer`;
  `cache`: the data folders and atomic, checked downloads; `readers`: file formats to documents.
- `clean` and `dedup`: normalisation, Gutenberg boilerplate, exact and MinHash near-duplicates.
- `shards`: a corpus tokenised into train/val `.bin` memmaps; `datasets`: windows and batches.
- `prepare`: fetch -> clean -> train tokenizer -> shards, reused when nothing changed.

Importing this package is cheap: each module is imported where it is used.
"""
