"""Let a job carry a unique key, refused twice while ready or running."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("klerk_django", "0004_job_progress"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="active_unique_key",
            field=models.CharField(
                blank=True, editable=False, max_length=255, null=True
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="unique_key",
            field=models.CharField(blank=True, max_length=255, null=True),
        ),
        migrations.AddConstraint(
            model_name="job",
            constraint=models.UniqueConstraint(
                fields=("active_unique_key",), name="klerk_job_active_unique_key"
            ),
        ),
    ]
