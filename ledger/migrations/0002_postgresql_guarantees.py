"""What PostgreSQL itself enforces for the ledger (SQLite: the service layer does, see ledger/services.py).

- ledger_posting_balanced (deferred constraint trigger): at commit, the postings of every transaction sum to zero
  and only posted (not rejected) transactions have postings; ledger_transaction_has_postings: a posted
  transaction has postings.
- ledger_immutable: no UPDATE or DELETE of transactions or postings (corrections are reversing transactions).
- ledger_posting_apply_balance: each posting insert adds its amount to the account's balance, and
  ledger_account_guard refuses any other change to a balance (or to who owns an account), so the balance is
  always the sum of postings and the CHECK constraint ledger_balance_gte_0 keeps user accounts at or above zero.
- ledger_chain_guard: the chain head only moves forward by one, linking to the hash it held.
Posting amounts <> 0 and balance >= 0 are CHECK constraints from 0001 (they hold on SQLite too). TRUNCATE is a
privilege question (grant the application role INSERT and SELECT only); tests need it to reset the database.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger: % on % is not allowed; ledger rows are immutable (post a reversing transaction)',
    TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER ledger_immutable BEFORE UPDATE OR DELETE ON ledger_transaction
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_immutable BEFORE UPDATE OR DELETE ON ledger_posting
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE total numeric; tx_status text;
BEGIN
  SELECT status INTO tx_status FROM ledger_transaction WHERE id = NEW.transaction_id;
  IF tx_status IS DISTINCT FROM 'posted' THEN
    RAISE EXCEPTION 'ledger: transaction % is % and cannot have postings', NEW.transaction_id, tx_status
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  SELECT sum(amount) INTO total FROM ledger_posting WHERE transaction_id = NEW.transaction_id;
  IF total <> 0 THEN
    RAISE EXCEPTION 'ledger: postings of transaction % sum to %, not 0', NEW.transaction_id, total
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_posting_balanced AFTER INSERT ON ledger_posting
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

CREATE FUNCTION ledger_check_has_postings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status = 'posted' AND NOT EXISTS (SELECT 1 FROM ledger_posting WHERE transaction_id = NEW.id) THEN
    RAISE EXCEPTION 'ledger: posted transaction % has no postings', NEW.id
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_transaction_has_postings AFTER INSERT ON ledger_transaction
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_has_postings();

CREATE FUNCTION ledger_apply_posting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE ledger_account SET balance = balance + NEW.amount WHERE id = NEW.account_id;
  RETURN NULL;
END $$;
CREATE TRIGGER ledger_posting_apply_balance AFTER INSERT ON ledger_posting
  FOR EACH ROW EXECUTE FUNCTION ledger_apply_posting();

CREATE FUNCTION ledger_guard_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.balance IS DISTINCT FROM OLD.balance AND pg_trigger_depth() < 2 THEN
    RAISE EXCEPTION 'ledger: the balance of account % changes only through postings', OLD.id
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  IF NEW.owner_id IS DISTINCT FROM OLD.owner_id OR NEW.role <> OLD.role OR NEW.shard <> OLD.shard
     OR NEW.currency <> OLD.currency OR NEW.allow_negative <> OLD.allow_negative THEN
    RAISE EXCEPTION 'ledger: account % cannot change owner, role, shard, currency or overdraft', OLD.id
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER ledger_account_guard BEFORE UPDATE ON ledger_account
  FOR EACH ROW EXECUTE FUNCTION ledger_guard_account();

CREATE FUNCTION ledger_guard_chain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.seq <> OLD.seq + 1 OR NEW.prev_hash <> OLD.hash THEN
    RAISE EXCEPTION 'ledger: the chain head only advances by one transaction'
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER ledger_chain_guard BEFORE UPDATE ON ledger_chainhead
  FOR EACH ROW EXECUTE FUNCTION ledger_guard_chain();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS ledger_chain_guard ON ledger_chainhead;
DROP TRIGGER IF EXISTS ledger_account_guard ON ledger_account;
DROP TRIGGER IF EXISTS ledger_posting_apply_balance ON ledger_posting;
DROP TRIGGER IF EXISTS ledger_transaction_has_postings ON ledger_transaction;
DROP TRIGGER IF EXISTS ledger_posting_balanced ON ledger_posting;
DROP TRIGGER IF EXISTS ledger_immutable ON ledger_posting;
DROP TRIGGER IF EXISTS ledger_immutable ON ledger_transaction;
DROP FUNCTION IF EXISTS ledger_guard_chain(), ledger_guard_account(), ledger_apply_posting(),
  ledger_check_has_postings(), ledger_check_balanced(), ledger_refuse_change();
"""


def _run(schema_editor, sql: str) -> None:
    # A raw cursor without parameters, so the '%' placeholders of RAISE are not taken for query parameters.
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(sql)


def forwards(apps, schema_editor):
    _run(schema_editor, FORWARD)


def backwards(apps, schema_editor):
    _run(schema_editor, BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
