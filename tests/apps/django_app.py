"""A single-file Django project: settings.configure, two views, CSRF middleware on (the form
view is csrf_exempt, as an API endpoint would be)."""

from __future__ import annotations

import hashlib

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

settings.configure(
    DEBUG=False,
    SECRET_KEY="binserve-tests-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
    ],
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"django says hi to {request.GET.get('who', 'nobody')}", content_type="text/plain")


@csrf_exempt
def form(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(status=405)
    upload = request.FILES.get("document")
    data = upload.read() if upload else b""
    return JsonResponse(
        {
            "name": request.POST["name"],
            "tags": request.POST.getlist("tag"),
            "file_sha256": hashlib.sha256(data).hexdigest() if upload else None,
        }
    )


def guarded(request: HttpRequest) -> HttpResponse:
    return HttpResponse("csrf let this through", content_type="text/plain")


urlpatterns = [path("", index), path("form", form), path("guarded", guarded)]

from django.core.wsgi import get_wsgi_application  # noqa: E402  (after settings.configure)

application = get_wsgi_application()
