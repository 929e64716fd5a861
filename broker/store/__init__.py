"""Tables, the engine, migrations; all SQL lives in this package."""
