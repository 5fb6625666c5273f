"""Lore: entries and their files, who may know them, embeddings, the index, search.

`entries` (schema and loaders; entries' `stages` are checked against the game's quest
stages), `scope` (the visibility rule: knowledge, scope, stage, and the gates on trust,
relationship, items and actions that keep a secret out of the prompt until the game
allows it, as flag rules do), `embedder` (sentence embedders; `plain_encoder` and
`lean_bert` run plain ones without sentence-transformers), `index` (faiss on disk),
`retrieval` (what steps and the CLI call). Heavy libraries (numpy, faiss,
sentence-transformers) are imported only when used.
"""
