"""`ramp report`: a self-contained HTML timeline of a rollout (model, sources, charts, rendering)."""
