"""Local labelling page for `cem label` (server + static HTML/JS)."""
