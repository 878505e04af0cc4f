"""A pool account per datanet (Account.datanet_id): forfeited earnings and slashed bonds go to their datanet's pool.
On PostgreSQL the account guard (migrations/0002) also refuses a change of an account's datanet."""

from django.conf import settings
from django.db import migrations, models

GUARD = """
CREATE OR REPLACE FUNCTION ledger_guard_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.balance IS DISTINCT FROM OLD.balance AND pg_trigger_depth() < 2 THEN
    RAISE EXCEPTION 'ledger: the balance of account % changes only through postings', OLD.id
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  IF NEW.owner_id IS DISTINCT FROM OLD.owner_id OR NEW.role <> OLD.role OR NEW.shard <> OLD.shard
     OR NEW.currency <> OLD.currency OR NEW.allow_negative <> OLD.allow_negative{extra} THEN
    RAISE EXCEPTION 'ledger: account % cannot change owner, role, shard, {words}currency or overdraft', OLD.id
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END $$;
"""


def _guard(schema_editor, *, with_datanet: bool) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    extra = " OR NEW.datanet_id IS DISTINCT FROM OLD.datanet_id" if with_datanet else ""
    sql = GUARD.replace("{extra}", extra).replace("{words}", "datanet, " if with_datanet else "")
    with schema_editor.connection.cursor() as cursor:  # no parameters: the '%' of RAISE stay as they are
        cursor.execute(sql)


def forwards(apps, schema_editor):
    _guard(schema_editor, with_datanet=True)


def backwards(apps, schema_editor):
    _guard(schema_editor, with_datanet=False)


class Migration(migrations.Migration):
    dependencies = [
        ("ledger", "0008_pending_earnings_and_bonds"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="account",
            name="ledger_one_system_shard",
        ),
        migrations.AddField(
            model_name="account",
            name="datanet_id",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddConstraint(
            model_name="account",
            constraint=models.UniqueConstraint(
                condition=models.Q(("datanet_id__isnull", True), ("owner__isnull", True)),
                fields=("role", "shard", "currency"),
                name="ledger_one_system_shard",
            ),
        ),
        migrations.AddConstraint(
            model_name="account",
            constraint=models.UniqueConstraint(
                condition=models.Q(("datanet_id__isnull", False)),
                fields=("datanet_id", "currency"),
                name="ledger_one_datanet_pool",
            ),
        ),
        migrations.AddConstraint(
            model_name="account",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("datanet_id__isnull", True),
                    models.Q(("role", "datanet_pool"), ("owner__isnull", True)),
                    _connector="OR",
                ),
                name="ledger_datanet_id_only_on_pools",
            ),
        ),
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
