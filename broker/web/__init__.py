"""HTML pages for people: Jinja2 templates (autoescape), CSRF, security headers.

``render`` is the one Jinja2 environment and the one way a page goes out (with the security
headers); ``csrf`` the double-submit cookie every form checks; ``device`` the device
verification pages. May import: auth (the device flow), api.deps, errors, runtime.
"""
