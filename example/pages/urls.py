from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("health/", views.health, name="health"),
    path("version/", views.version, name="version"),
    path("echo/", views.echo, name="echo"),
    path("tasks/add/", views.task_add, name="task-add"),
    path("tasks/slow/", views.task_slow, name="task-slow"),
    path("tasks/result/<str:task_id>/", views.task_result, name="task-result"),
]
