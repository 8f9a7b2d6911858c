"""Adapters that put metalr controllers inside other training loops.

- `metalr.integrations.hf.MetalrCallback`: a `transformers.TrainerCallback`.
- `metalr.integrations.lightning.MetalrCallback`: a Lightning 2.x `Callback` (extra `lightning`).
- `metalr.integrations.plain.hook` (`metalr.hook`): a controller on an optimizer's step hook.
- `metalr.integrations.base.Binding`: what the three share (controller + tracker + checkpointable state).

Imported lazily: `import metalr` never imports transformers or lightning.
"""
