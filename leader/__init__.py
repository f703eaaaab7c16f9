"""The leader: owns all state, hands out tasks under leases, never calls an LLM."""
