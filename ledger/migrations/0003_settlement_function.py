"""PostgreSQL only: ledger_settlement_post(), a whole settlement in one round trip (ledger/services.py
`_settlement_post_fast`), and cheaper forms of two 0002 triggers: balances are applied once per INSERT statement
(net per account, from the statement's transition table) instead of once per posting row, and the deferred
balanced check asks one query instead of two. SQLite: nothing; the service's general path runs there.

The function adds no new rule and relaxes none: every row it writes goes through the same triggers and
constraints as any other insert (migrations/0002: balanced postings at commit, immutability, balances kept by
the posting trigger, the CHECK on balances, the chain-head guard). What it does differently from the general path
is only where the steps run:

- the idempotency-key lookup, the hold row lock, the account row locks (one SELECT ... ORDER BY id FOR UPDATE,
  the same order as the general path, so the two paths cannot deadlock each other), the funds check and all the
  writes happen server-side, in one statement;
- the postings (and their balance updates) and the hold's closing are written BEFORE the chain head is locked
  (the transaction id comes from its sequence; the foreign keys are deferred), so the single row every write
  serialises on is held only for its own UPDATE, the transaction INSERT and the commit;
- with p_early_release (the service passes it when the call is its own transaction) the commit does not wait for
  the WAL flush (SET LOCAL synchronous_commit = off), so the chain head and account row locks are released before
  the disk flush instead of after it. The service then waits for durability before it answers (a flushing
  commit after ours; see `_durable` in services.py). WAL is written and replayed in order, so a crash can only
  lose a suffix of transactions, never one in the middle of the chain, and nobody was told those succeeded.

Whenever the request is not the plain case (the key exists, the hold is not open or too small, an account or the
chain head does not exist yet, the payer lacks funds, fewer than two legs), the function returns no row and
writes nothing; the service then runs the general path, which answers replays, conflicts, rejections (recorded)
and errors exactly as before.

The hash covers head || postings JSON || tail, where head and tail are the canonical JSON of the transaction
around its "postings" value (ledger/calc/canonical.py `transaction_content_parts`), and the postings JSON is
'[[account,amount],...]' sorted by (account, amount) as Python's canonical_json writes it (bigint::text is the same
digits as Python's int). ledger_verify recomputes every hash in Python.
"""

from django.db import migrations

FORWARD = """
-- Balances: one set-based UPDATE per INSERT statement on postings (the net per account of the inserted rows)
-- instead of one UPDATE per posting row; same guarantee (the balance is the sum of postings whatever inserts
-- them), a sixth of the work for a 6-posting settlement. The guard (0002) still refuses any other balance change.
DROP TRIGGER ledger_posting_apply_balance ON ledger_posting;
CREATE FUNCTION ledger_apply_postings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE ledger_account a SET balance = a.balance + n.net
    FROM (SELECT account_id, sum(amount) AS net FROM new_postings GROUP BY account_id) n
   WHERE a.id = n.account_id AND n.net <> 0;
  RETURN NULL;
END $$;
CREATE TRIGGER ledger_posting_apply_balance AFTER INSERT ON ledger_posting
  REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_postings();

-- The balanced check (0002) runs once per posting at commit; one query instead of two.
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

CREATE FUNCTION ledger_settlement_post(
  p_key text, p_kind text, p_memo text, p_metadata jsonb, p_request_hash text, p_created_at timestamptz,
  p_content_head bytea, p_content_tail bytea,
  p_users bigint[], p_user_amounts bigint[],
  p_platform_shard integer, p_platform_amount bigint,
  p_hold_key text, p_fee bigint, p_early_release boolean
) RETURNS TABLE (tx_id bigint, tx_seq bigint, tx_prev_hash text, tx_hash text)
LANGUAGE plpgsql AS $$
DECLARE
  v_hold ledger_hold%ROWTYPE;
  v_ids bigint[];
  v_owners bigint[];
  v_platform bigint;
  v_acc bigint[] := '{}';
  v_amt bigint[] := '{}';
  v_at integer;
  v_tx bigint;
  v_postings text;
BEGIN
  IF EXISTS (SELECT 1 FROM ledger_transaction WHERE idempotency_key = p_key)
     OR NOT EXISTS (SELECT 1 FROM ledger_chainhead WHERE id = 1) THEN
    RETURN;  -- a replay, a conflict or a fresh database: the general path answers
  END IF;
  IF p_hold_key IS NOT NULL THEN
    SELECT * INTO v_hold FROM ledger_hold WHERE key = p_hold_key FOR UPDATE;
    IF NOT FOUND OR v_hold.status <> 'held' OR p_fee > v_hold.amount THEN
      RETURN;
    END IF;
  END IF;

  -- Every account of the settlement, locked in id order (LockRows runs above the sort).
  SELECT array_agg(a.id ORDER BY a.id), array_agg(a.owner_id ORDER BY a.id),
         max(a.id) FILTER (WHERE a.owner_id IS NULL AND a.role = 'platform')
    INTO v_ids, v_owners, v_platform
    FROM (SELECT id, owner_id, role FROM ledger_account
           WHERE owner_id = ANY (p_users)
              OR (owner_id IS NULL AND role = 'platform' AND shard = p_platform_shard)
              OR id = v_hold.payer_id OR id = v_hold.clearing_id
           ORDER BY id FOR UPDATE) a;
  IF v_platform IS NULL THEN
    RETURN;
  END IF;

  FOR i IN 1 .. coalesce(array_length(p_users, 1), 0) LOOP
    v_at := array_position(v_owners, p_users[i]);
    IF v_at IS NULL THEN
      RETURN;  -- a wallet that does not exist yet: the general path creates it
    END IF;
    IF p_user_amounts[i] <> 0 THEN
      v_acc := v_acc || v_ids[v_at];
      v_amt := v_amt || p_user_amounts[i];
    END IF;
  END LOOP;
  IF p_platform_amount <> 0 THEN
    v_acc := v_acc || v_platform;
    v_amt := v_amt || p_platform_amount;
  END IF;
  IF p_hold_key IS NOT NULL THEN
    v_acc := v_acc || v_hold.clearing_id;
    v_amt := v_amt || (-v_hold.amount);
    IF v_hold.amount - p_fee <> 0 THEN
      v_acc := v_acc || v_hold.payer_id;
      v_amt := v_amt || (v_hold.amount - p_fee);
    END IF;
  END IF;
  IF coalesce(array_length(v_acc, 1), 0) < 2 OR (SELECT sum(x) FROM unnest(v_amt) x) <> 0 THEN
    RETURN;
  END IF;

  -- Funds, on the locked balances: a payer short of credit is answered (and recorded) by the general path.
  IF EXISTS (
    SELECT 1
      FROM (SELECT acc, sum(amt) AS net FROM unnest(v_acc, v_amt) AS l(acc, amt) GROUP BY acc) n
      JOIN ledger_account a ON a.id = n.acc
     WHERE n.net < 0 AND NOT a.allow_negative AND a.balance + n.net < 0
  ) THEN
    RETURN;
  END IF;

  v_tx := nextval(pg_get_serial_sequence('ledger_transaction', 'id'));
  -- Credits first, as the general path does, so no balance passes below its final value on the way.
  INSERT INTO ledger_posting (transaction_id, account_id, amount)
  SELECT v_tx, acc, amt FROM unnest(v_acc, v_amt) AS l(acc, amt) ORDER BY amt < 0, acc, amt;
  SELECT '[' || string_agg('[' || acc || ',' || amt || ']', ',' ORDER BY acc, amt) || ']'
    INTO v_postings FROM unnest(v_acc, v_amt) AS l(acc, amt);
  IF p_hold_key IS NOT NULL THEN
    UPDATE ledger_hold SET status = 'settled', close_tx_id = v_tx, closed_at = p_created_at WHERE id = v_hold.id;
  END IF;
  IF p_early_release THEN
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;

  -- Last: the chain head. Its row lock is the one every ledger write waits for.
  RETURN QUERY
  WITH head AS (
    UPDATE ledger_chainhead
       SET seq = seq + 1, prev_hash = hash,
           hash = encode(sha256(decode(hash, 'hex') || p_content_head || convert_to(v_postings, 'UTF8')
                                || p_content_tail), 'hex')
     WHERE id = 1
    RETURNING seq, prev_hash, hash
  ), tx AS (
    INSERT INTO ledger_transaction
      (id, idempotency_key, kind, status, memo, metadata, request_hash, created_at, seq, prev_hash, hash)
    SELECT v_tx, p_key, p_kind, 'posted', p_memo, p_metadata, p_request_hash, p_created_at,
           head.seq, head.prev_hash, head.hash
      FROM head
    RETURNING id, seq, prev_hash, hash
  )
  SELECT tx.id, tx.seq, tx.prev_hash::text, tx.hash::text FROM tx;
END $$;
"""

BACKWARD = """
DROP TRIGGER ledger_posting_apply_balance ON ledger_posting;
DROP FUNCTION ledger_apply_postings();
CREATE TRIGGER ledger_posting_apply_balance AFTER INSERT ON ledger_posting
  FOR EACH ROW EXECUTE FUNCTION ledger_apply_posting();
DROP FUNCTION IF EXISTS ledger_settlement_post(text, text, text, jsonb, text, timestamptz, bytea, bytea, bigint[],
  bigint[], integer, bigint, text, bigint, boolean);
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""


def _run(schema_editor, sql: str) -> None:
    # A raw cursor without parameters (as in 0002), so '%' in the SQL is not taken for a query parameter.
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(sql)


def forwards(apps, schema_editor):
    _run(schema_editor, FORWARD)


def backwards(apps, schema_editor):
    _run(schema_editor, BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0002_postgresql_guarantees")]
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
