"""Every `cem bench`: each measures the paper's way and ours in the same run and returns one JSON-able
dict. em_data finds and loads the real EM they all use. Only the CLI imports this package."""
