"""The `access-broker` commands (typer): serve, migrate, users, service-accounts, policy, audit."""
