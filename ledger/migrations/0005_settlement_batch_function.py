"""PostgreSQL only: ledger_settlement_post_many(), many settlements in one call and one commit (ledger/services.py
`settlement_post_many`). SQLite: nothing; the service loops over the general path there.

Each settlement of a batch is still its own ledger transaction (its own idempotency key, request hash, postings
and link in the hash chain); what the batch shares is the round trip, the locks and the commit (and the wait for
the disk flush), as TigerBeetle batches transfers. Like ledger_settlement_post (0003) it adds no rule and relaxes
none: every row goes through the triggers and constraints of 0002/0003 (balanced postings at commit, immutability,
balances kept by the posting trigger, the CHECK on balances, the chain guard, which still sees the head advance
by one per transaction: the head is updated once per settlement).

Order of work, the same as the single function so the paths cannot deadlock each other:
- the holds of the batch, locked in id order; then every account of the batch in one SELECT ... ORDER BY id
  FOR UPDATE (their balances are read there, under the lock);
- each item in batch order is checked exactly as the single function checks one (key not used, not repeated
  earlier in the batch, hold open and large enough, every wallet and the platform shard exist, the legs sum to
  zero, funds) against the balances as the earlier items of the batch leave them (kept in an array); an item
  that is not the plain case is left out and writes nothing, and the service answers it through the general path
  after the batch, as it does for one settlement;
- one INSERT of all postings (so the balance trigger runs once, with each account's net over the batch) and one
  UPDATE of the holds settled;
- last, the chain head: one UPDATE per settlement (hash_n covers hash_n-1, in item order), then one INSERT of
  all the transactions. With p_early_release the commit does not wait for the WAL flush (see 0003); the service
  waits for it once for the whole batch before it answers.

The items come as parallel arrays (one element per settlement) and their user legs as three flat arrays, item i's
legs being p_leg_first[i] .. p_leg_first[i + 1] - 1 (p_leg_first has n + 1 elements). Returns one row per
settlement posted: its position in the batch (1-based), id, seq, previous hash and hash.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION ledger_settlement_post_many(
  p_keys text[], p_memos text[], p_metadata text[], p_request_hashes text[], p_created_at timestamptz[],
  p_content_heads bytea[], p_content_tails bytea[],
  p_platform_shards integer[], p_platform_amounts bigint[], p_hold_keys text[], p_fees bigint[],
  p_leg_first integer[], p_leg_users bigint[], p_leg_amounts bigint[],
  p_early_release boolean
) RETURNS TABLE (item integer, tx_id bigint, tx_seq bigint, tx_prev_hash text, tx_hash text)
LANGUAGE plpgsql AS $$
DECLARE
  n integer := coalesce(array_length(p_keys, 1), 0);
  v_used text[];
  -- holds, locked, in id order
  v_hold_ids bigint[]; v_hold_keys text[]; v_hold_open boolean[]; v_hold_amounts bigint[];
  v_hold_payers bigint[]; v_hold_clearings bigint[];
  -- accounts, locked, in id order, with their balances as the items so far leave them
  v_ids bigint[]; v_owners bigint[]; v_balances bigint[]; v_negative boolean[];
  v_platform_shards integer[]; v_platform_at integer[];
  -- the current item
  v_at integer; v_hold integer; v_pos integer[]; v_amt bigint[]; v_ok boolean;
  -- what the batch writes
  w_items integer[] := '{}'; w_tx bigint[] := '{}'; w_holds bigint[] := '{}'; w_hold_tx bigint[] := '{}';
  w_hold_at timestamptz[] := '{}';
  p_tx bigint[] := '{}'; p_acc bigint[] := '{}'; p_amt bigint[] := '{}';
  v_tx bigint; v_postings text[]; v_seq bigint[] := '{}'; v_prev text[] := '{}'; v_hash text[] := '{}';
  h_seq bigint; h_prev text; h_hash text;
BEGIN
  IF n = 0 OR coalesce(array_length(p_leg_first, 1), 0) <> n + 1
     OR NOT EXISTS (SELECT 1 FROM ledger_chainhead WHERE id = 1) THEN
    RETURN;  -- nothing to do, a malformed call or a fresh database: the general path answers
  END IF;
  SELECT array_agg(idempotency_key) INTO v_used FROM ledger_transaction WHERE idempotency_key = ANY (p_keys);

  SELECT array_agg(h.id ORDER BY h.id), array_agg(h.key ORDER BY h.id), array_agg(h.status = 'held' ORDER BY h.id),
         array_agg(h.amount ORDER BY h.id), array_agg(h.payer_id ORDER BY h.id),
         array_agg(h.clearing_id ORDER BY h.id)
    INTO v_hold_ids, v_hold_keys, v_hold_open, v_hold_amounts, v_hold_payers, v_hold_clearings
    FROM (SELECT id, key, status, amount, payer_id, clearing_id FROM ledger_hold
           WHERE key = ANY (p_hold_keys) ORDER BY id FOR UPDATE) h;

  -- Every account of the batch, locked in id order (LockRows runs above the sort), as the single function does.
  SELECT array_agg(a.id ORDER BY a.id), array_agg(a.owner_id ORDER BY a.id), array_agg(a.balance ORDER BY a.id),
         array_agg(a.allow_negative ORDER BY a.id)
    INTO v_ids, v_owners, v_balances, v_negative
    FROM (SELECT id, owner_id, balance, allow_negative FROM ledger_account
           WHERE owner_id = ANY (p_leg_users)
              OR (owner_id IS NULL AND role = 'platform' AND shard = ANY (p_platform_shards))
              OR id = ANY (v_hold_payers) OR id = ANY (v_hold_clearings)
           ORDER BY id FOR UPDATE) a;
  SELECT array_agg(s.shard), array_agg(array_position(v_ids, s.id))
    INTO v_platform_shards, v_platform_at
    FROM ledger_account s
   WHERE s.owner_id IS NULL AND s.role = 'platform' AND s.shard = ANY (p_platform_shards);

  <<items>>
  FOR i IN 1 .. n LOOP
    IF p_keys[i] = ANY (v_used) OR p_keys[i] = ANY (p_keys[1 : i - 1]) THEN
      CONTINUE items;  -- a replay, a conflict or a key repeated in the batch
    END IF;
    v_hold := NULL;
    IF p_hold_keys[i] IS NOT NULL THEN
      v_hold := array_position(v_hold_keys, p_hold_keys[i]);
      IF v_hold IS NULL OR NOT v_hold_open[v_hold] OR p_fees[i] > v_hold_amounts[v_hold] THEN
        CONTINUE items;
      END IF;
    END IF;
    v_pos := '{}';
    v_amt := '{}';
    FOR j IN p_leg_first[i] .. p_leg_first[i + 1] - 1 LOOP
      v_at := array_position(v_owners, p_leg_users[j]);
      IF v_at IS NULL THEN
        CONTINUE items;  -- a wallet that does not exist yet: the general path creates it
      END IF;
      IF p_leg_amounts[j] <> 0 THEN
        v_pos := v_pos || v_at;
        v_amt := v_amt || p_leg_amounts[j];
      END IF;
    END LOOP;
    IF p_platform_amounts[i] <> 0 THEN
      v_at := v_platform_at[array_position(v_platform_shards, p_platform_shards[i])];
      IF v_at IS NULL THEN
        CONTINUE items;
      END IF;
      v_pos := v_pos || v_at;
      v_amt := v_amt || p_platform_amounts[i];
    END IF;
    IF v_hold IS NOT NULL THEN
      v_pos := v_pos || array_position(v_ids, v_hold_clearings[v_hold]);
      v_amt := v_amt || (-v_hold_amounts[v_hold]);
      IF v_hold_amounts[v_hold] - p_fees[i] <> 0 THEN
        v_pos := v_pos || array_position(v_ids, v_hold_payers[v_hold]);
        v_amt := v_amt || (v_hold_amounts[v_hold] - p_fees[i]);
      END IF;
    END IF;
    IF coalesce(array_length(v_pos, 1), 0) < 2 OR array_position(v_pos, NULL) IS NOT NULL
       OR (SELECT sum(x) FROM unnest(v_amt) x) <> 0 THEN
      CONTINUE items;
    END IF;

    -- Funds: apply the item to the balances, and take it back if an account that may not go negative would.
    FOR k IN 1 .. array_length(v_pos, 1) LOOP
      v_balances[v_pos[k]] := v_balances[v_pos[k]] + v_amt[k];
    END LOOP;
    v_ok := true;
    FOR k IN 1 .. array_length(v_pos, 1) LOOP
      IF v_balances[v_pos[k]] < 0 AND NOT v_negative[v_pos[k]] THEN
        v_ok := false;
      END IF;
    END LOOP;
    IF NOT v_ok THEN
      FOR k IN 1 .. array_length(v_pos, 1) LOOP
        v_balances[v_pos[k]] := v_balances[v_pos[k]] - v_amt[k];
      END LOOP;
      CONTINUE items;  -- a payer short of credit is answered (and recorded) by the general path
    END IF;

    v_tx := nextval(pg_get_serial_sequence('ledger_transaction', 'id'));
    w_items := w_items || i;
    w_tx := w_tx || v_tx;
    FOR k IN 1 .. array_length(v_pos, 1) LOOP
      p_tx := p_tx || v_tx;
      p_acc := p_acc || v_ids[v_pos[k]];
      p_amt := p_amt || v_amt[k];
    END LOOP;
    IF v_hold IS NOT NULL THEN
      v_hold_open[v_hold] := false;  -- a second item on the same hold goes to the general path (HoldNotOpen)
      w_holds := w_holds || v_hold_ids[v_hold];
      w_hold_tx := w_hold_tx || v_tx;
      w_hold_at := w_hold_at || p_created_at[i];
    END IF;
  END LOOP;

  IF coalesce(array_length(w_items, 1), 0) = 0 THEN
    RETURN;
  END IF;
  -- Credits first within each transaction, as the general path does.
  INSERT INTO ledger_posting (transaction_id, account_id, amount)
  SELECT t, acc, amt FROM unnest(p_tx, p_acc, p_amt) AS l(t, acc, amt) ORDER BY t, amt < 0, acc, amt;
  UPDATE ledger_hold h SET status = 'settled', close_tx_id = c.tx, closed_at = c.at
    FROM unnest(w_holds, w_hold_tx, w_hold_at) AS c(id, tx, at)
   WHERE h.id = c.id;
  SELECT array_agg(js ORDER BY t) INTO v_postings
    FROM (SELECT t, '[' || string_agg('[' || acc || ',' || amt || ']', ',' ORDER BY acc, amt) || ']' AS js
            FROM unnest(p_tx, p_acc, p_amt) AS l(t, acc, amt) GROUP BY t) j;
  IF p_early_release THEN
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;

  -- Last: the chain head, one link per settlement in batch order (the transaction ids rise in the same order).
  FOR k IN 1 .. array_length(w_items, 1) LOOP
    UPDATE ledger_chainhead
       SET seq = seq + 1, prev_hash = hash,
           hash = encode(sha256(decode(hash, 'hex') || p_content_heads[w_items[k]]
                                || convert_to(v_postings[k], 'UTF8') || p_content_tails[w_items[k]]), 'hex')
     WHERE id = 1
    RETURNING seq, prev_hash, hash INTO h_seq, h_prev, h_hash;
    v_seq := v_seq || h_seq;
    v_prev := v_prev || h_prev;
    v_hash := v_hash || h_hash;
  END LOOP;
  INSERT INTO ledger_transaction
    (id, idempotency_key, kind, status, memo, metadata, request_hash, created_at, seq, prev_hash, hash)
  SELECT w.t, p_keys[w.at], 'settlement', 'posted', p_memos[w.at], p_metadata[w.at]::jsonb, p_request_hashes[w.at],
         p_created_at[w.at], w.s, w.pv, w.hs
    FROM unnest(w_items, w_tx, v_seq, v_prev, v_hash) AS w(at, t, s, pv, hs);
  RETURN QUERY SELECT w.at, w.t, w.s, w.pv, w.hs FROM unnest(w_items, w_tx, v_seq, v_prev, v_hash) AS w(at, t, s, pv, hs);
END $$;
"""

BACKWARD = """
DROP FUNCTION IF EXISTS ledger_settlement_post_many(text[], text[], text[], text[], timestamptz[], bytea[], bytea[],
  integer[], bigint[], text[], bigint[], integer[], bigint[], bigint[], boolean);
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
    dependencies = [("ledger", "0004_posting_account_index_covered")]
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
