"""Events published after commit, and the outbox for work that must happen after it."""
