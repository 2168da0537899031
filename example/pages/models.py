from django.db import models


class Visit(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    path = models.CharField(max_length=255)

    def __str__(self) -> str:
        return f"{self.path} @ {self.created_at:%Y-%m-%d %H:%M:%S}"
