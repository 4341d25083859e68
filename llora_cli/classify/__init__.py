"""Classifiers (issue 15, seed 000): a decoder LLM with LoRA and a classification head.

So far: the classification data. ``intent`` generates labelled requests (``llora data make intent``); user files of
``{"text": ..., "label": ...}`` rows are registered by ``llora data add`` / ``--data FILE`` with their label set
(format ``classify``). Training, merging, delivery and ``llora classify`` come next (docs/classify.md).
"""
