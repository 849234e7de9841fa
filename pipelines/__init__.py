"""The DAGs and the CLI. Knows KFP; knows no model code (that lives in `reset`)."""
