"""The router: picks, per query, which modifier of a base answers it (or the base alone).

``encoder`` (the frozen sentence encoder), ``losses`` (FBC, DPO, ORPO over a categorical policy),
``model`` (the head and its files), ``collect`` (scenario sets: measured answers), ``fit`` and ``evaluate``.
Nothing here is imported by catalog commands; numpy, safetensors, tokenizers and (to fit) torch load inside functions.
"""
