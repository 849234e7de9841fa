"""The paper's experiment arms as config overlays (filled in by the evidence work)."""
