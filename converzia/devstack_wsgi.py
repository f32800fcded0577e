"""WSGI entry point for `make run`: the app plus /static/ served from the installed apps.

gunicorn does not serve static files, and Django serves them only through `runserver` (DEBUG or
not), so without this the admin and the API docs (drf-spectacular-sidecar's Swagger UI and ReDoc)
load without their CSS and JavaScript. StaticFilesHandler is what `runserver` wraps the app in: it
finds files with the staticfiles finders, so no `collectstatic` is needed. Development only;
production serves `collectstatic` output from STATIC_ROOT instead.
"""

from django.contrib.staticfiles.handlers import StaticFilesHandler

from converzia.wsgi import application as django_application

application = StaticFilesHandler(django_application)
