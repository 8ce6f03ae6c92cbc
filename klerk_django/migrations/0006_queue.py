"""Add the queue switch that pauses a queue for every worker."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("klerk_django", "0005_job_unique_key"),
    ]

    operations = [
        migrations.CreateModel(
            name="Queue",
            fields=[
                (
                    "name",
                    models.CharField(max_length=100, primary_key=True, serialize=False),
                ),
                ("paused", models.BooleanField(default=False)),
                ("paused_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "db_table": "klerk_queue",
                "ordering": ["name"],
            },
        ),
    ]
