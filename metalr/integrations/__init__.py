"""Adapters that put metalr controllers inside other training loops.

- `metalr.integrations.hf.MetalrCallback`: a `transformers.TrainerCallback`.

Imported lazily: `import metalr` never imports transformers.
"""
