"""The prediction and feedback HTTP service (``python -m slmops.serving``); the app is
:func:`slmops.serving.app.create_app`.

Nothing is imported here: ``python -m slmops.serving`` sets the offline defaults
before the service's libraries load, which a package import of the app would precede.
"""
