"""The call core: one call bridged to one model session, admission and routing, the model connection."""
