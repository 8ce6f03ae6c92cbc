"""Store what a running job last reported about its progress."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("klerk_django", "0003_command_record_token"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="progress",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
