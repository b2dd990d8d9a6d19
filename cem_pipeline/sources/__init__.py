"""Where the data comes from. Reads: the manifest (YAML/CSV or inline in the config) and the files
and URLs it names. Gives: `VolumeItem`s (manifest.expand_all) and lazy `Volume`s opened by one
reader per format family (readers.open_volume). Writes nothing."""
