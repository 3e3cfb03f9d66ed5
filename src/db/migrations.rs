//! The schema, as an ordered list of migrations applied under
//! `PRAGMA user_version`.
//!
//! Never edit or remove an entry once released: append a new one.

pub const MIGRATIONS: &[&str] = &[
    // 1: members, balances, the ledger, runs and files.
    r#"
CREATE TABLE members(
    id        INTEGER PRIMARY KEY,
    member_id TEXT NOT NULL UNIQUE,
    email     TEXT UNIQUE,              -- trimmed and lower-cased; NULL if none
    status    INTEGER NOT NULL CHECK (status IN (0, 1, 2))  -- active, suspended, withdrawn
);

-- Follows from the ledger; kept for O(1) reads. The CHECK turns SQLite's
-- silent integer-overflow-to-REAL into an error that rolls the file back.
CREATE TABLE balances(
    member INTEGER PRIMARY KEY REFERENCES members(id),
    miles  INTEGER NOT NULL CHECK (typeof(miles) = 'integer' AND miles >= 0)
);

CREATE TABLE runs(
    id          INTEGER PRIMARY KEY,
    partner     TEXT NOT NULL,
    trigger     TEXT NOT NULL,          -- manual | schedule | catch-up
    dry_run     INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT NOT NULL,          -- RFC 3339 UTC
    finished_at TEXT,
    outcome     TEXT,                   -- ok | no-file | missed | refused | failed
    files       INTEGER NOT NULL DEFAULT 0,
    rows        INTEGER NOT NULL DEFAULT 0,
    credited    INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    miles       INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);
CREATE INDEX runs_by_partner ON runs(partner, id);

CREATE TABLE files(
    id          INTEGER PRIMARY KEY,
    partner     TEXT NOT NULL,
    run_id      INTEGER REFERENCES runs(id),
    name        TEXT NOT NULL,          -- as delivered
    size        INTEGER NOT NULL,
    mtime       INTEGER,                -- as the server reported it
    sha256      TEXT NOT NULL,
    outcome     TEXT NOT NULL,          -- credited | refused | duplicate
    reason      TEXT,                   -- why refused
    rows        INTEGER NOT NULL DEFAULT 0,
    credited    INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    failed_by_code TEXT NOT NULL DEFAULT '{}',  -- JSON {"E003": 2, ...}
    miles       INTEGER NOT NULL DEFAULT 0,
    archive_path TEXT,
    report_path TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    tidy        TEXT NOT NULL DEFAULT 'pending'  -- pending | done: remote move/upload after commit
);
-- The exactly-once guarantee for files: one credited delivery per content.
CREATE UNIQUE INDEX files_credited_once ON files(partner, sha256) WHERE outcome = 'credited';
CREATE INDEX files_by_listing ON files(partner, name, size, mtime);
CREATE INDEX files_pending_tidy ON files(partner) WHERE tidy = 'pending';

-- One row per credited line. Clustered on (file, line): appends are
-- sequential, and a line can never be credited twice.
CREATE TABLE ledger(
    file_id     INTEGER NOT NULL REFERENCES files(id),
    line        INTEGER NOT NULL,
    partner     TEXT NOT NULL,
    member      INTEGER NOT NULL REFERENCES members(id),
    partner_key TEXT NOT NULL,
    miles       INTEGER NOT NULL CHECK (miles > 0),
    credited_at INTEGER NOT NULL,       -- unix seconds
    dup         INTEGER NOT NULL,       -- 0; the line number when the partner allows duplicate rows
    PRIMARY KEY (file_id, line)
) WITHOUT ROWID;
-- History search by partner key, and E008 (same member, key and miles
-- earlier in the same file) as a uniqueness conflict: one B-tree probe.
CREATE UNIQUE INDEX ledger_by_key ON ledger(partner, partner_key, file_id, member, miles, dup);
CREATE INDEX ledger_by_member ON ledger(member);

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

-- Daemon state per partner: last successful scheduled run, for catch-up.
CREATE TABLE partner_state(
    partner      TEXT PRIMARY KEY,
    last_success TEXT,                  -- RFC 3339 UTC
    last_attempt TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
"#,
    // 2: no `ledger_by_member`. Every credited row paid a random-position
    // insert into it (profile of 1M rows: ledger inserts 5.6 s → 1.8 s
    // without it), and nothing reads the ledger by member: balances come
    // from `balances`, history goes through `ledger_by_key`. A per-member
    // audit is an ops query that may scan the ledger.
    "DROP INDEX ledger_by_member;",
    // 3: the ledger clustered on its key. `ledger_by_key` (history search,
    // and E008 as a uniqueness conflict) becomes the table's primary key, so
    // a credited row costs one B-tree insert instead of two (the (file_id,
    // line) primary key was the second). A line still cannot be credited
    // twice: a file's lines go in within the one transaction that records
    // the file, and the file row is unique per content.
    // No REFERENCES here: checked per row they were a members probe for
    // every credited line. The member is still checked, once per member per
    // file: every credited row adds to its member's balance in the same
    // transaction, and `balances.member REFERENCES members(id)` is enforced.
    // `file_id` is the file row inserted by that same transaction.
    r#"
CREATE TABLE ledger_v3(
    partner     TEXT NOT NULL,
    partner_key TEXT NOT NULL,
    file_id     INTEGER NOT NULL,
    member      INTEGER NOT NULL,
    miles       INTEGER NOT NULL CHECK (miles > 0),
    dup         INTEGER NOT NULL,       -- 0; the line number when the partner allows duplicate rows
    line        INTEGER NOT NULL,
    credited_at INTEGER NOT NULL,       -- unix seconds
    PRIMARY KEY (partner, partner_key, file_id, member, miles, dup)
) WITHOUT ROWID;
INSERT INTO ledger_v3(partner, partner_key, file_id, member, miles, dup, line, credited_at)
    SELECT partner, partner_key, file_id, member, miles, dup, line, credited_at FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v3 RENAME TO ledger;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"#,
    // 4: nothing silent. What a run listed and did not take (`skips`: the
    // first 100, as JSON [{name, reason, detail, file_id, ...}]; counts per
    // reason in `skipped_by_reason`), a tidy-up that keeps failing after the
    // credit (`tidy_error` and since when), and when the partner's last
    // error happened and since when it has been failing. Only new columns,
    // so it applies in any order with other appended migrations.
    // New run outcomes: `skipped` and `tidy-failed` (see README, Daemon).
    r#"
ALTER TABLE runs ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN skipped_by_reason TEXT NOT NULL DEFAULT '{}';
ALTER TABLE runs ADD COLUMN skips TEXT NOT NULL DEFAULT '[]';
ALTER TABLE files ADD COLUMN tidy_error TEXT;
ALTER TABLE files ADD COLUMN tidy_failing_since TEXT;
ALTER TABLE partner_state ADD COLUMN last_error_at TEXT;
ALTER TABLE partner_state ADD COLUMN failing_since TEXT;
"#,
    // 5: the audit trail (src/audit.rs) shared by the CLI, the API and the
    // site, append-only like the ledger; and the channel a file came by
    // (`pull` from the partner's server, `upload` through the site). A
    // ledger row's channel is its file's, or `api` for file_id 0.
    r#"
CREATE TABLE audit(
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,              -- RFC 3339 UTC
    actor   TEXT NOT NULL,              -- cli:<user> | user:<email> | key:<prefix> | daemon
    action  TEXT NOT NULL,
    partner TEXT,
    detail  TEXT NOT NULL DEFAULT '',   -- never a secret or a member's e-mail
    client  TEXT                        -- client address of a web request
);
CREATE INDEX audit_by_partner ON audit(partner, id);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
ALTER TABLE files ADD COLUMN channel TEXT NOT NULL DEFAULT 'pull';
"#,
    // 6 (credit side of "nothing silent"): per file, how many credited rows
    // repeat a row of an earlier file (NULL: not checked, resend_check =
    // "off"), and the file-level code of a refused or duplicate file
    // (F001–F007). Columns only: independent of other migrations.
    r#"
ALTER TABLE files ADD COLUMN repeats INTEGER;
ALTER TABLE files ADD COLUMN file_code TEXT;
"#,
    // 7: management-site accounts (src/web/auth/). `users`: one row per
    // person (partner staff, or ops when `partner` is NULL), an argon2id
    // PHC hash, the per-account lockout. `sessions`: only the SHA-256 of a
    // session id is stored, so a copy of the database opens no session;
    // `expires_at` (unix seconds) moves forward on each request (idle
    // expiry). `login_throttle`: failed logins per client address.
    r#"
CREATE TABLE users(
    id            INTEGER PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE COLLATE NOCASE,
    partner       TEXT,                 -- NULL: ops (sees every partner)
    hash          TEXT NOT NULL,        -- argon2id, PHC string
    disabled      INTEGER NOT NULL DEFAULT 0,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER,              -- unix seconds
    created_at    TEXT NOT NULL,
    password_set_at TEXT NOT NULL
);
CREATE TABLE sessions(
    id_sha256  BLOB PRIMARY KEY,
    user       INTEGER NOT NULL REFERENCES users(id),
    created_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL,        -- unix seconds; idle expiry
    csrf       TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX sessions_by_user ON sessions(user);
CREATE TABLE login_throttle(
    client       TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL,
    window_start INTEGER NOT NULL,      -- unix seconds
    locked_until INTEGER
);
"#,
    // 8: partner API keys (src/web/auth/api_keys.rs). Only a SHA-256 of
    // each key is kept; `prefix` is its first characters, shown in lists and
    // audit rows and used to revoke it. A revoked key stays, for the audit.
    r#"
CREATE TABLE api_keys(
    id           INTEGER PRIMARY KEY,
    partner      TEXT NOT NULL,
    prefix       TEXT NOT NULL UNIQUE,
    sha256       TEXT NOT NULL UNIQUE,  -- hex SHA-256 of the whole key
    label        TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL,         -- RFC 3339 UTC
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE INDEX api_keys_by_partner ON api_keys(partner, id);
"#,
    // 9: API exchanges (src/web/writer.rs). One row per Idempotency-Key of
    // a partner, kept forever: the stored answer (201 or 422) is what a
    // retry gets, months later too. A credited one is the ledger row
    // (partner, partner_key, file_id 0, member, miles, dup = id), with
    // line = id. `api_daily` sums a partner's API miles per local day for
    // `daily_miles_limit` in one probe.
    r#"
CREATE TABLE api_exchanges(
    id             INTEGER PRIMARY KEY,
    partner        TEXT NOT NULL,
    idem_key       TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,       -- of the canonical request body
    key_prefix     TEXT NOT NULL,       -- the API key that sent it
    status         INTEGER NOT NULL,    -- 201 credited | 422 rejected
    code           TEXT,                -- E00x when rejected
    body           TEXT NOT NULL,       -- the answer, replayed as is
    member         INTEGER,             -- when credited
    partner_key    TEXT,
    miles          INTEGER,
    created_at     TEXT NOT NULL,       -- RFC 3339 UTC
    UNIQUE (partner, idem_key)
);
CREATE INDEX api_exchanges_by_partner ON api_exchanges(partner, id);
CREATE TRIGGER api_exchanges_no_update BEFORE UPDATE OF partner, idem_key, request_sha256, status, member, partner_key, miles ON api_exchanges
BEGIN SELECT RAISE(ABORT, 'API exchanges are kept as answered'); END;
CREATE TRIGGER api_exchanges_no_delete BEFORE DELETE ON api_exchanges
BEGIN SELECT RAISE(ABORT, 'API exchanges are kept forever'); END;
CREATE TABLE api_daily(
    partner TEXT NOT NULL,
    day     TEXT NOT NULL,              -- YYYY-MM-DD in [daemon] timezone
    miles   INTEGER NOT NULL,
    PRIMARY KEY (partner, day)
) WITHOUT ROWID;
"#,
    // 10: the digest of a credited file's ledger rows, written in the
    // credit's transaction (src/money/digest.rs) and checked by `verify`.
    // NULL for files credited before this migration.
    "ALTER TABLE files ADD COLUMN ledger_digest TEXT;",
    // 11: reversals (src/money/reverse.rs). A wrong credit is taken back by
    // compensating NEGATIVE ledger rows, so the ledger is rebuilt with
    // `miles <> 0` and a `reversal` column naming the `reversals` row (who,
    // why, when, what) that wrote them; NULL on every credit. Same key, same
    // append-only triggers, every row kept. A reversal row has the key of
    // the row it reverses with the miles negated, so it can never collide
    // with it. No REFERENCES on `reversal`, for the reason given at 3.
    // A reversed file's outcome becomes `reversed` (`files.reversal` names
    // the reversal): the credited-once index then lets `retry` credit its
    // bytes again, and only `retry` (see credit.rs's duplicate check).
    r#"
CREATE TABLE reversals(
    id        INTEGER PRIMARY KEY,
    partner   TEXT NOT NULL,
    file_id   INTEGER REFERENCES files(id),  -- the reversed file, or
    exchange  INTEGER,                  -- the reversed API exchange (file_id 0, dup = its id)
    actor     TEXT NOT NULL,            -- as in audit.actor
    reason    TEXT NOT NULL,
    at        TEXT NOT NULL,            -- RFC 3339 UTC
    rows      INTEGER NOT NULL,         -- ledger rows written (one per reversed row)
    miles     INTEGER NOT NULL,         -- miles taken back (positive)
    members   INTEGER NOT NULL,         -- members whose balance went down
    ledger_digest TEXT NOT NULL,        -- of its ledger rows, as files.ledger_digest
    CHECK ((file_id IS NULL) <> (exchange IS NULL))
);
CREATE UNIQUE INDEX reversals_once_per_file ON reversals(file_id) WHERE file_id IS NOT NULL;
CREATE UNIQUE INDEX reversals_once_per_exchange ON reversals(exchange) WHERE exchange IS NOT NULL;
CREATE INDEX reversals_by_partner ON reversals(partner, id);
CREATE TABLE ledger_v7(
    partner     TEXT NOT NULL,
    partner_key TEXT NOT NULL,
    file_id     INTEGER NOT NULL,
    member      INTEGER NOT NULL,
    miles       INTEGER NOT NULL CHECK (miles <> 0),
    dup         INTEGER NOT NULL,
    line        INTEGER NOT NULL,
    credited_at INTEGER NOT NULL,       -- unix seconds
    reversal    INTEGER,                -- reversals.id for a compensating row; NULL for a credit
    PRIMARY KEY (partner, partner_key, file_id, member, miles, dup)
) WITHOUT ROWID;
INSERT INTO ledger_v7(partner, partner_key, file_id, member, miles, dup, line, credited_at, reversal)
    SELECT partner, partner_key, file_id, member, miles, dup, line, credited_at, NULL FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v7 RENAME TO ledger;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
ALTER TABLE files ADD COLUMN reversal INTEGER REFERENCES reversals(id);
"#,
    // 12: `milebatch retry` (src/money/retry.rs): the file whose archived
    // bytes a file row re-processed. Column only.
    "ALTER TABLE files ADD COLUMN retry_of INTEGER REFERENCES files(id);",
    // 13: the daemon's scheduled maintenance (src/money/verify.rs,
    // src/money/backup.rs). One row per scheduled `verify` of the live
    // database (what `status` and the verify metrics show) and per scheduled
    // backup (its file, size, whether the copy verified, what retention
    // deleted, or the error).
    r#"
CREATE TABLE verify_runs(
    id            INTEGER PRIMARY KEY,
    at            TEXT NOT NULL,          -- RFC 3339 UTC, when it started
    ok            INTEGER NOT NULL,       -- 1: everything adds up
    problems      INTEGER NOT NULL,       -- mismatches found
    ledger_rows   INTEGER NOT NULL,
    seconds       REAL NOT NULL,
    first_problem TEXT                    -- `kind: subject: detail` of the first mismatch, or the error
);
CREATE TABLE backup_runs(
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,               -- RFC 3339 UTC
    path     TEXT,
    bytes    INTEGER,
    ok       INTEGER NOT NULL,            -- 1: written and verified
    deleted  INTEGER NOT NULL DEFAULT 0,  -- older backups removed by `keep`
    error    TEXT
);
"#,
    // 14: "run now" requests from the management site (src/run_requests.rs).
    // `serve` holds no transfer credentials, so it only records the request;
    // the daemon polls for queued rows (started_at NULL), runs the partner
    // under its usual lock and records the run and its outcome. Times are
    // RFC 3339 UTC; `run_id` names `runs.id` (no REFERENCES, as at 3).
    r#"
CREATE TABLE run_requests(
    id           INTEGER PRIMARY KEY,
    partner      TEXT NOT NULL,
    requested_by TEXT NOT NULL,     -- as in audit.actor
    requested_at TEXT NOT NULL,
    started_at   TEXT,              -- NULL: queued
    finished_at  TEXT,              -- NULL with started_at set: running
    run_id       INTEGER,           -- the run it became (NULL if none started)
    outcome      TEXT               -- the run's outcome, or why there was none
);
CREATE INDEX run_requests_open ON run_requests(partner, id) WHERE finished_at IS NULL;
"#,
    // 15: the key that seals the partner API's paging cursors
    // (src/web/api/cursor.rs), so a cursor cannot be made or altered by
    // hand and survives a restart. One row, made here: SQLite's
    // randomblob() is its ChaCha20 generator seeded from the OS.
    r#"
CREATE TABLE api_cursor_key(
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    key BLOB NOT NULL CHECK (length(key) = 32)
);
INSERT INTO api_cursor_key(id, key) VALUES (1, randomblob(32));
"#,
    // 16: stray files (src/store/strays.rs): an inbox name matching
    // neither `pattern` nor `ignore` is reported by the run that first sees
    // it, then listed as ignored while its listing entry stays the same.
    // `mtime` is NULL when the server gives none.
    r#"
CREATE TABLE stray_files(
    partner     TEXT NOT NULL,
    name        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    mtime       INTEGER,
    reported_at TEXT NOT NULL,          -- RFC 3339 UTC
    PRIMARY KEY (partner, name)
);
"#,
    // 17: the notifications outbox (src/store/outbox.rs). An event is
    // written in the transaction of what it reports; the daemon routes it
    // to the channels configured then (one `deliveries` row per channel)
    // and sends. `lease_until` (unix seconds) is the claim of the process
    // sending it, so two senders never send the same delivery at once.
    r#"
CREATE TABLE outbox(
    id         INTEGER PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,    -- evt_…, the same on every retry
    kind       TEXT NOT NULL,           -- file.refused, …
    partner    TEXT,                    -- NULL: an operator-wide event
    created_at TEXT NOT NULL,           -- RFC 3339 UTC
    data       TEXT NOT NULL,           -- JSON: the event's fields
    routed     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_unrouted ON outbox(id) WHERE routed = 0;
CREATE TABLE deliveries(
    id          INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL,
    channel     TEXT NOT NULL,          -- email | webhook | ops
    target      TEXT NOT NULL,          -- addresses or URL, for people
    state       TEXT NOT NULL,          -- pending | sent | failed
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER NOT NULL,       -- unix seconds: not before
    give_up_at  INTEGER NOT NULL,       -- unix seconds: failed after this
    lease_until INTEGER,
    last_error  TEXT,
    sent_at     TEXT,
    UNIQUE (event_id, channel)
);
CREATE INDEX deliveries_due ON deliveries(next_at) WHERE state = 'pending';
"#,
    // 18: members are never deleted (a member leaves as `withdrawn`): the
    // ledger's and balances' member ids can never dangle. SQLite keeps its
    // foreign keys as well; PostgreSQL's 18 drops the balances one, which
    // this makes redundant (see there).
    r#"
CREATE TRIGGER members_never_deleted BEFORE DELETE ON members
BEGIN
    SELECT RAISE(ABORT, 'members are never deleted: set their status to withdrawn');
END;
CREATE TRIGGER members_keep_their_id BEFORE UPDATE OF id ON members WHEN OLD.id <> NEW.id
BEGIN
    SELECT RAISE(ABORT, 'a member keeps its internal id');
END;
"#,
];
