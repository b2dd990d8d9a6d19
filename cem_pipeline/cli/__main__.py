"""`python -m cem_pipeline.cli ...` = `cem ...` (what `cem bench all` runs each benchmark with)."""
from cem_pipeline.cli import app

app(prog_name="cem")
