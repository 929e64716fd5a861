"""HTML pages for people: Jinja2 templates (autoescape), CSRF, security headers.

``render`` is the one Jinja2 environment and the one way a page goes out (with the security
headers); ``pages`` what every page does alike (forms, errors, the CSRF cookie); ``csrf`` the
double-submit cookie every form checks; ``device`` the device verification pages; ``inbox``
the approvals inbox (``inbox_view`` words its requests for people, pure); ``apidocs`` /docs,
Swagger UI served from its package. May import: auth (the
device flow, browser sign-ins), grants (approvals), api.deps, errors, runtime.
"""
