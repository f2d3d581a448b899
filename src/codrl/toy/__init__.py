"""Toy-only code, kept apart from the real paths: SecretTable (:mod:`codrl.toy.secret_table`), a
world small enough for a tiny policy, and that policy (:mod:`codrl.toy.policy`: a small Llama
built from a word-level tokenizer, its reading warm-up and its saving).

They prove the method end to end on a CPU in minutes (``bench/toy_cod_effect.py``) and make the
trainer's tests fast. No module outside this package imports it; the environment registry names
``secret_table`` by import path, like any plug-in.
"""
