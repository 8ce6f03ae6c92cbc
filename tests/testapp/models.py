from django.db import models


class Run(models.Model):
    """One call of a test job or action, written by the code under test."""

    kind = models.CharField(max_length=50)
    key = models.CharField(max_length=100)
    pid = models.IntegerField(default=0)
    attempt = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "testapp"


class Note(models.Model):
    """Data that test commands write."""

    text = models.CharField(max_length=200)

    class Meta:
        app_label = "testapp"
