"""A committed transaction is sealed: no posting can be added to it later, even a balanced pair; and no TRUNCATE of
a ledger table.

PostgreSQL:
- ledger_posting_balanced (0002, 0003) now also checks, at commit, that each new posting was written in the same
  database (sub)transaction as its ledger transaction (the two rows' xmin are equal). Both are always written in
  one statement or one atomic block (engine.py, the settlement functions of 0003 and 0005), so this never refuses
  a real posting; a posting added to a transaction committed earlier has a newer xmin and is refused.
- ledger_no_truncate: a BEFORE TRUNCATE statement trigger on every ledger table (TRUNCATE fires no row
  triggers, so 0002's append-only triggers did not cover it). Test databases only (named test_...) may be emptied,
  and only by a session that sets ledger.allow_truncate = on (the test suite does, to reset between tests).
SQLite (no xmin, no TRUNCATE): ledger_posting_sealed refuses a posting for a transaction that is not posted, or
whose postings already sum to zero. The engine writes a transaction's postings in one INSERT, credits first, so
their running sum reaches zero only with the last one: a balanced transaction is complete.
"""

from django.db import migrations

LEDGER_TABLES = (
    "ledger_account",
    "ledger_transaction",
    "ledger_posting",
    "ledger_chainhead",
    "ledger_checkpoint",
    "ledger_hold",
    "ledger_withdrawal",
)

PG_FORWARD = """
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE total numeric; tx_status text; same_xact boolean;
BEGIN
  SELECT t.status, t.xmin = p.xmin,
         (SELECT sum(q.amount) FROM ledger_posting q WHERE q.transaction_id = NEW.transaction_id)
    INTO tx_status, same_xact, total
    FROM ledger_transaction t, ledger_posting p WHERE t.id = NEW.transaction_id AND p.id = NEW.id;
  IF tx_status IS DISTINCT FROM 'posted' THEN
    RAISE EXCEPTION 'ledger: transaction % is % and cannot have postings', NEW.transaction_id, tx_status
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  IF NOT same_xact THEN
    RAISE EXCEPTION 'ledger: transaction % was committed earlier; no posting can be added to it', NEW.transaction_id
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  IF total <> 0 THEN
    RAISE EXCEPTION 'ledger: postings of transaction % sum to %, not 0', NEW.transaction_id, total
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION ledger_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_database() LIKE 'test\\_%' AND current_setting('ledger.allow_truncate', true) = 'on' THEN
    RETURN NULL;
  END IF;
  RAISE EXCEPTION 'ledger: TRUNCATE on % is not allowed; ledger rows are immutable', TG_TABLE_NAME
    USING ERRCODE = 'integrity_constraint_violation';
END $$;
"""

PG_TRUNCATE_TRIGGER = (
    "CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT "
    "EXECUTE FUNCTION ledger_refuse_truncate();"
)

# The function as 0003 left it.
PG_BACKWARD = """
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE total numeric; tx_status text;
BEGIN
  SELECT t.status, (SELECT sum(p.amount) FROM ledger_posting p WHERE p.transaction_id = NEW.transaction_id)
    INTO tx_status, total FROM ledger_transaction t WHERE t.id = NEW.transaction_id;
  IF tx_status IS DISTINCT FROM 'posted' THEN
    RAISE EXCEPTION 'ledger: transaction % is % and cannot have postings', NEW.transaction_id, tx_status
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  IF total <> 0 THEN
    RAISE EXCEPTION 'ledger: postings of transaction % sum to %, not 0', NEW.transaction_id, total
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NULL;
END $$;
"""

SQLITE_FORWARD = """
CREATE TRIGGER ledger_posting_sealed BEFORE INSERT ON ledger_posting
WHEN (SELECT status FROM ledger_transaction WHERE id = NEW.transaction_id) IS NOT 'posted'
  OR (SELECT count(*) > 0 AND sum(amount) = 0 FROM ledger_posting WHERE transaction_id = NEW.transaction_id)
BEGIN
  SELECT RAISE(ABORT, 'ledger: the transaction is not posted or already complete; no posting can be added to it');
END;
"""


def forwards(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A raw cursor without parameters, so the '%' placeholders of RAISE are not taken for query parameters.
            cursor.execute(PG_FORWARD)
            for table in LEDGER_TABLES:
                cursor.execute(PG_TRUNCATE_TRIGGER.format(table=table))
        elif connection.vendor == "sqlite":
            cursor.execute(SQLITE_FORWARD)


def backwards(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for table in LEDGER_TABLES:
                cursor.execute(f"DROP TRIGGER IF EXISTS ledger_no_truncate ON {table};")
            cursor.execute("DROP FUNCTION IF EXISTS ledger_refuse_truncate();")
            cursor.execute(PG_BACKWARD)
        elif connection.vendor == "sqlite":
            cursor.execute("DROP TRIGGER IF EXISTS ledger_posting_sealed;")


class Migration(migrations.Migration):
    dependencies = [("ledger", "0006_credit_grant_permission")]
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
