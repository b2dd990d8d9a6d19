"""`cem demo`: a generated EM-like corpus with known truth (corpus), that truth as filter labels in place
of a person (labels, for `cem label --demo-corpus`) and the whole pipeline run on it (run). Only the
CLI imports this package."""
