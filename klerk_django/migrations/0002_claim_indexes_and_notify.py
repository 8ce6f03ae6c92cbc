"""Indexes shaped like the claim and recovery queries, the global command
lock row, and, on PostgreSQL, the trigger that wakes listening workers."""

from django.db import migrations

PARTIAL_INDEXES = [
    "CREATE INDEX klerk_job_claim ON klerk_job (priority DESC, run_after, id) "
    "WHERE status = 'ready'",
    "CREATE INDEX klerk_job_lease ON klerk_job (lease_expires_at) "
    "WHERE status = 'running'",
]
# MariaDB and MySQL have no partial indexes; status leads instead.
PLAIN_INDEXES = [
    "CREATE INDEX klerk_job_claim ON klerk_job (status, priority, run_after, id)",
    "CREATE INDEX klerk_job_lease ON klerk_job (status, lease_expires_at)",
]
NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION klerk_job_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('klerk_jobs', queued.queue)
    FROM (SELECT DISTINCT queue FROM klerk_new_jobs WHERE status = 'ready') AS queued;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
NOTIFY_TRIGGER = (
    "CREATE TRIGGER klerk_job_notify AFTER INSERT ON klerk_job "
    "REFERENCING NEW TABLE AS klerk_new_jobs "
    "FOR EACH STATEMENT EXECUTE FUNCTION klerk_job_notify()"
)


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    statements = PLAIN_INDEXES if vendor == "mysql" else PARTIAL_INDEXES
    if vendor == "postgresql":
        statements = statements + [NOTIFY_FUNCTION, NOTIFY_TRIGGER]
    for statement in statements:
        schema_editor.execute(statement)

    lock = apps.get_model("klerk_django", "CommandLock")
    lock.objects.using(schema_editor.connection.alias).get_or_create(key="global")


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute("DROP TRIGGER IF EXISTS klerk_job_notify ON klerk_job")
        schema_editor.execute("DROP FUNCTION IF EXISTS klerk_job_notify()")
    for name in ("klerk_job_claim", "klerk_job_lease"):
        if vendor == "mysql":
            schema_editor.execute(f"DROP INDEX {name} ON klerk_job")
        else:
            schema_editor.execute(f"DROP INDEX {name}")


class Migration(migrations.Migration):
    dependencies = [("klerk_django", "0001_initial")]

    # DDL on MariaDB and MySQL cannot run inside a transaction.
    operations = [migrations.RunPython(create, drop, atomic=False)]
