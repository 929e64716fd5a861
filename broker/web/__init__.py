"""HTML pages for people: Jinja2 templates, CSRF, security headers."""
