"""The HTTP application: falcon's app, its resources, middleware and problem documents.

The only place route paths and problem types are written. Runs under any
WSGI server; nothing here knows waitress.
"""
