"""`cem demo`: a generated EM-like corpus with known truth (corpus) and the whole pipeline run on it
(run). Only the CLI imports this package."""
