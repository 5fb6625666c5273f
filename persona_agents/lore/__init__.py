"""Lore: entries and their files, who may know them, embeddings, the index, search.

`entries` (schema and loaders), `scope` (the visibility rule), `embedder` (sentence
embedders; `plain_encoder` and `lean_bert` run plain ones without sentence-transformers), `index` (faiss on disk), `retrieval` (what steps and the CLI call). Heavy
libraries (numpy, faiss, sentence-transformers) are imported only when used.
"""
