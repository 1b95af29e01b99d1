"""Adapters that plug maskclip models into other tools; each imports its tool only when used.

- ``maskclip.integrations.clip_benchmark``: a model loader for CLIP_benchmark (``--model_type maskclip``).

These modules sit above the model core and use only its public API (``maskclip.load`` and the
model's methods); the core never imports them.
"""
