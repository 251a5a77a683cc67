"""Hardware profiles shipped with edgeml: one TOML file per target."""
