"""The grant lifecycle: request, decide, issue, end; expiry."""
