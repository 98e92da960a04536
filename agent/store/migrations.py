"""Versioned schema of the store. Adding a migration = appending one `Migration` to `MIGRATIONS`.

Rules: never edit or reorder a migration that has shipped (devices in the field already ran
it); versions are 1, 2, 3, ... without gaps; each migration runs inside one transaction
together with the `PRAGMA user_version` bump, so a crash leaves the database at either the
old or the new version, never in between.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step: `sql` (one or more statements) brings version-1 to `version`."""

    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "readings ring and device health",
        """
        -- ts is integer microseconds since the Unix epoch, UTC: exact to the microsecond,
        -- orders numerically whatever offset the producer used, and is cheap to range-scan.
        -- vtype keeps the Python type: SQLite alone cannot tell bool from int, or 1.0 from 1.
        -- value_num has no declared type on purpose: no affinity, so ints stay INTEGER and
        -- floats stay REAL exactly as bound. A float NaN is stored as NULL (SQLite has no NaN);
        -- an int beyond 64 bits is stored in value_text as decimal digits.
        CREATE TABLE readings (
            id INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            device TEXT NOT NULL,
            quantity TEXT NOT NULL,
            vtype TEXT NOT NULL CHECK (vtype IN ('none', 'bool', 'int', 'float', 'str')),
            value_num,
            value_text TEXT,
            unit TEXT NOT NULL DEFAULT '',
            quality TEXT NOT NULL,
            CHECK (
                (vtype = 'none' AND value_num IS NULL AND value_text IS NULL)
                OR (vtype = 'bool' AND typeof(value_num) = 'integer' AND value_num IN (0, 1)
                    AND value_text IS NULL)
                OR (vtype = 'int' AND typeof(value_num) = 'integer' AND value_text IS NULL)
                OR (vtype = 'int' AND value_num IS NULL AND value_text IS NOT NULL)
                OR (vtype = 'float' AND typeof(value_num) IN ('real', 'null')
                    AND value_text IS NULL)
                OR (vtype = 'str' AND value_num IS NULL AND value_text IS NOT NULL)
            )
        );
        CREATE INDEX readings_device_quantity_ts ON readings (device, quantity, ts);
        CREATE INDEX readings_ts ON readings (ts);

        -- The latest DeviceHealth per device, as the event's own JSON (it is small and only
        -- ever read whole); ts duplicates the event's ts so a late, older event cannot win.
        CREATE TABLE device_health (
            device TEXT PRIMARY KEY,
            health TEXT NOT NULL,
            ts INTEGER NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "sessions, charge records, billing state",
        """
        -- Charging sessions (issue 4). Times are integer µs since the epoch, UTC, like
        -- readings.ts; energy is integer Wh from the meter register; money is TEXT holding
        -- Decimal digits (never REAL). A session's row, samples and events change together in
        -- one transaction; a closed session has exactly one charge record.
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            connector INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('active', 'closed')),
            status TEXT NOT NULL,
            started_ts INTEGER NOT NULL,
            charging_end_ts INTEGER,
            ended_ts INTEGER,
            auth_method TEXT NOT NULL,
            id_token TEXT NOT NULL,
            id_token_type TEXT NOT NULL,
            meter_device TEXT NOT NULL,
            meter_serial TEXT,
            start_wh INTEGER NOT NULL CHECK (start_wh >= 0),
            billed_wh INTEGER NOT NULL DEFAULT 0 CHECK (billed_wh >= 0),
            tariff_id TEXT,
            tariff_json TEXT,           -- the tariff in force at the start, as priced
            limits_json TEXT NOT NULL DEFAULT '{}',
            payment_json TEXT,
            ocmf_begin TEXT,
            tracker_json TEXT NOT NULL, -- metering state: high-water mark, gaps, review reasons
            stop_reason TEXT,
            updated_ts INTEGER NOT NULL,
            CHECK ((state = 'active') = (ended_ts IS NULL))
        );
        CREATE UNIQUE INDEX sessions_one_active ON sessions (connector) WHERE state = 'active';
        CREATE INDEX sessions_started ON sessions (started_ts);

        -- Status transitions and session events (session_id NULL: the connector's own).
        CREATE TABLE session_events (
            id INTEGER PRIMARY KEY,
            session_id TEXT REFERENCES sessions (id),
            connector INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            status TEXT NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX session_events_session ON session_events (session_id, id);
        CREATE INDEX session_events_connector ON session_events (connector, ts);

        -- Register readings kept with a session: begin, periodic, clock-aligned, tariff
        -- change, gap, anomaly, end. session_wh is the billed energy up to this sample.
        CREATE TABLE meter_samples (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions (id),
            ts INTEGER NOT NULL,
            kind TEXT NOT NULL,
            register_wh INTEGER NOT NULL CHECK (register_wh >= 0),
            session_wh INTEGER NOT NULL CHECK (session_wh >= 0),
            tx TEXT,                    -- OCMF reading reason when signed: B, T, E, L, R, A, P
            measurands TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX meter_samples_session ON meter_samples (session_id, ts);

        -- Charge records: the body is the chained JSON (see agent/billing/chain.py); the
        -- other columns copy body fields for reports. delivered_ts is the outbox marker: set
        -- once the cloud confirmed the record. Records are kept until then AND the retention
        -- period passed; never deleted to make room.
        CREATE TABLE charge_records (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            session_id TEXT NOT NULL UNIQUE REFERENCES sessions (id),
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            body TEXT NOT NULL,
            connector INTEGER NOT NULL,
            started_ts INTEGER NOT NULL,
            ended_ts INTEGER NOT NULL,
            energy_wh INTEGER NOT NULL CHECK (energy_wh >= 0),
            currency TEXT,
            total_excl_vat TEXT,
            total_incl_vat TEXT,
            review INTEGER NOT NULL DEFAULT 0 CHECK (review IN (0, 1)),
            created_ts INTEGER NOT NULL,
            delivered_ts INTEGER
        );
        CREATE INDEX charge_records_started ON charge_records (started_ts);
        CREATE INDEX charge_records_undelivered ON charge_records (seq) WHERE delivered_ts IS NULL;
        -- Guards against accidents (a deliberate edit is what `evedge billing verify` finds).
        CREATE TRIGGER charge_records_immutable
        BEFORE UPDATE OF seq, id, session_id, prev_hash, hash, body, energy_wh, total_excl_vat,
            total_incl_vat ON charge_records
        BEGIN
            SELECT RAISE(ABORT, 'charge records are immutable; only delivered_ts may be set');
        END;
        CREATE TRIGGER charge_records_kept
        BEFORE DELETE ON charge_records WHEN OLD.delivered_ts IS NULL
        BEGIN
            SELECT RAISE(ABORT, 'a charge record the cloud has not confirmed is never deleted');
        END;

        -- Small durable values: OCMF pagination counter, chain anchor, connector availability.
        CREATE TABLE billing_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );

        -- Authorization: the local list (OCPP SendLocalList; seeded from the config) and the
        -- cache of online answers.
        CREATE TABLE auth_list (
            id_token TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            expiry_ts INTEGER,
            group_id TEXT,
            source TEXT NOT NULL,
            updated_ts INTEGER NOT NULL
        );
        CREATE TABLE auth_cache (
            id_token TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            expiry_ts INTEGER,
            group_id TEXT,
            updated_ts INTEGER NOT NULL
        );

        -- Payment terminal pre-authorizations and what became of them.
        CREATE TABLE payments (
            ref TEXT PRIMARY KEY,
            connector INTEGER NOT NULL,
            session_id TEXT REFERENCES sessions (id),
            currency TEXT NOT NULL,
            authorized TEXT NOT NULL,
            captured TEXT,
            status TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            updated_ts INTEGER NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "faults: raised and cleared, with their full payload",
        """
        -- Diagnosis faults (issue 3). One row per raised fault: payload is the FaultRaised
        -- event's JSON, cleared the FaultCleared's (NULL while active). Times are integer
        -- µs since the epoch, UTC. At most one active fault per rule and scope: after a
        -- restart the active rows are loaded and re-evaluated, never raised twice.
        CREATE TABLE faults (
            fault_id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            scope TEXT NOT NULL,
            severity TEXT NOT NULL,
            raised_ts INTEGER NOT NULL,
            cleared_ts INTEGER,
            clear_reason TEXT,
            payload TEXT NOT NULL,
            cleared TEXT,
            CHECK ((cleared_ts IS NULL) = (cleared IS NULL))
        );
        CREATE UNIQUE INDEX faults_one_active ON faults (rule, scope) WHERE cleared_ts IS NULL;
        CREATE INDEX faults_raised ON faults (raised_ts);
        """,
    ),
    Migration(
        4,
        "ocpp: configuration keys and charge point state",
        """
        -- OCPP configuration keys the CSMS set with ChangeConfiguration (issue 5). They win
        -- over the config file's values; value is the OCPP string as accepted, already
        -- validated against agent/ocpp/config_keys.toml. Times are integer µs since the
        -- epoch, UTC.
        CREATE TABLE ocpp_config (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_ts INTEGER NOT NULL
        );
        -- Small durable facts of the charge point: the highest security profile used so
        -- far (a downgrade is refused), the last boot status.
        CREATE TABLE ocpp_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_ts INTEGER NOT NULL
        );
        """,
    ),
    Migration(
        5,
        "ocpp: durable transaction message outbox",
        """
        -- OCPP transaction messages (issue 5, agent/ocpp/outbox.py). A session's
        -- StartTransaction / StopTransaction rows are inserted in the same transaction as the
        -- session row / charge record they describe; MeterValues when sampled. seq is the
        -- send order. payload is the camelCase JSON to send, without transactionId (filled
        -- from ocpp_transactions at send time). A row is never deleted before delivered_ts
        -- is set; exhausted counts the rounds of TransactionMessageAttempts that failed
        -- (kept and retried after the next reconnect); parked = 1 until then.
        CREATE TABLE ocpp_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL,
            connector INTEGER NOT NULL,
            action TEXT NOT NULL
                CHECK (action IN ('StartTransaction', 'MeterValues', 'StopTransaction')),
            payload TEXT NOT NULL,
            created_ts INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            exhausted INTEGER NOT NULL DEFAULT 0,
            parked INTEGER NOT NULL DEFAULT 0 CHECK (parked IN (0, 1)),
            last_attempt_ts INTEGER,
            last_error TEXT,
            delivered_ts INTEGER
        );
        CREATE INDEX ocpp_outbox_pending ON ocpp_outbox (seq) WHERE delivered_ts IS NULL;
        CREATE INDEX ocpp_outbox_session ON ocpp_outbox (session_id, seq);
        CREATE TRIGGER ocpp_outbox_kept
        BEFORE DELETE ON ocpp_outbox WHEN OLD.delivered_ts IS NULL
        BEGIN
            SELECT RAISE(ABORT, 'an undelivered OCPP transaction message is never deleted');
        END;

        -- One row per session that became an OCPP transaction: the CSMS's transactionId
        -- (NULL until StartTransaction.conf; -1 when the start was given up, see outbox.py)
        -- and the idTagInfo status it answered.
        CREATE TABLE ocpp_transactions (
            session_id TEXT PRIMARY KEY,
            connector INTEGER NOT NULL,
            transaction_id INTEGER,
            id_tag_status TEXT,
            started_ts INTEGER NOT NULL,
            stopped_ts INTEGER
        );
        CREATE INDEX ocpp_transactions_id ON ocpp_transactions (transaction_id);
        """,
    ),
    Migration(
        6,
        "ocpp: charging profiles",
        """
        -- OCPP 1.6 charging profiles set by the CSMS (SetChargingProfile), kept across
        -- restarts. body is the profile as JSON, camelCase as on the wire; the other columns
        -- copy body fields for ClearChargingProfile's filters. A TxProfile is deleted when
        -- its transaction ends. Times are integer µs since the epoch, UTC.
        CREATE TABLE ocpp_charging_profiles (
            profile_id INTEGER PRIMARY KEY,
            connector INTEGER NOT NULL CHECK (connector >= 0),
            purpose TEXT NOT NULL
                CHECK (purpose IN ('ChargePointMaxProfile', 'TxDefaultProfile', 'TxProfile')),
            stack_level INTEGER NOT NULL CHECK (stack_level >= 0),
            body TEXT NOT NULL,
            installed_ts INTEGER NOT NULL
        );
        """,
    ),
    Migration(
        7,
        "mqtt: outbox, stream sequences, cursors, seen commands",
        """
        -- MQTT store-and-forward (issue 6, agent/mqtt/outbox.py). A message is committed
        -- here before it is published (QoS 1) and deleted only once the broker acknowledged
        -- it (PUBACK). seq is per stream and never reused (mqtt_state keeps the counter, so
        -- deleting delivered rows keeps numbering); msg_id is the backend's idempotency key.
        -- kind 'bulk' rows (telemetry, health) may be thinned when the outbox runs short of
        -- room; 'keep' rows (faults, sessions, charge records, replies, ...) never are.
        -- AUTOINCREMENT: an id is never reused after its row is deleted, so the publisher's
        -- "published up to id N" never skips a new message.
        CREATE TABLE mqtt_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL,
            msg_id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            retain INTEGER NOT NULL DEFAULT 0 CHECK (retain IN (0, 1)),
            correlation BLOB,
            kind TEXT NOT NULL CHECK (kind IN ('bulk', 'keep')),
            ref TEXT,  -- the charge record / ticket id whose delivered_ts the PUBACK sets
            created_ts INTEGER NOT NULL,
            UNIQUE (stream, seq)
        );
        CREATE INDEX mqtt_outbox_kind ON mqtt_outbox (kind, stream, id);
        CREATE INDEX mqtt_outbox_ref ON mqtt_outbox (stream, ref) WHERE ref IS NOT NULL;
        -- Per-stream sequence counters ('seq:<stream>') and cursors into other tables
        -- ('cursor:billing' = the last charge_records.seq enqueued), integers.
        CREATE TABLE mqtt_state (
            key TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        );
        -- Command ids already handled (replay protection); kept until the command expired.
        CREATE TABLE mqtt_seen_commands (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            received_ts INTEGER NOT NULL,
            expires_ts INTEGER NOT NULL
        );
        CREATE INDEX mqtt_seen_commands_expires ON mqtt_seen_commands (expires_ts);
        """,
    ),
    Migration(
        8,
        "tickets: driver issue reports",
        """
        -- Driver problem reports (issue 7, agent/tickets). body is the Ticket JSON (report
        -- plus diagnostic snapshot): the payload sent to the cloud. The other columns copy
        -- body fields for listing. delivered_ts is the outbox marker, set once the cloud
        -- confirmed the ticket; until then the row is never deleted. Times: µs UTC.
        CREATE TABLE tickets (
            id TEXT PRIMARY KEY,
            station TEXT NOT NULL,
            connector INTEGER NOT NULL,
            created_ts INTEGER NOT NULL,
            source TEXT NOT NULL,
            category TEXT NOT NULL,
            body TEXT NOT NULL,
            delivered_ts INTEGER
        );
        CREATE INDEX tickets_created ON tickets (created_ts);
        CREATE INDEX tickets_undelivered ON tickets (created_ts) WHERE delivered_ts IS NULL;
        CREATE TRIGGER tickets_immutable
        BEFORE UPDATE OF id, station, connector, created_ts, source, category, body ON tickets
        BEGIN
            SELECT RAISE(ABORT, 'tickets are immutable; only delivered_ts may be set');
        END;
        CREATE TRIGGER tickets_kept
        BEFORE DELETE ON tickets WHEN OLD.delivered_ts IS NULL
        BEGIN
            SELECT RAISE(ABORT, 'a ticket the cloud has not confirmed is never deleted');
        END;
        """,
    ),
    Migration(
        9,
        "faults: latch state",
        """
        -- Diagnosis faults that latch (issue 11): latch is the last FaultLatch event's JSON
        -- (latched / retry / active, retries used) of an active fault whose rule clears only
        -- on evidence or by hand; NULL while it never latched. Kept after the clear as part of
        -- the fault's history.
        ALTER TABLE faults ADD COLUMN latch TEXT;
        """,
    ),
    Migration(
        10,
        "kpi: scheduled maintenance windows",
        """
        -- Scheduled maintenance a technician set (agent/kpi/maintenance.py): outage time
        -- inside a window is excluded from the NEVI uptime. connector NULL: the whole
        -- station. Times: µs UTC, [start_ts, end_ts).
        CREATE TABLE kpi_maintenance (
            id INTEGER PRIMARY KEY,
            connector INTEGER,
            start_ts INTEGER NOT NULL,
            end_ts INTEGER NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            created_ts INTEGER NOT NULL,
            CHECK (end_ts > start_ts)
        );
        CREATE INDEX kpi_maintenance_start ON kpi_maintenance (start_ts);
        """,
    ),
    Migration(
        11,
        "ocpp outbox: security event notifications",
        """
        -- SecurityEventNotification (agent/security/) travels through the durable OCPP
        -- outbox too, with session_id '' and connector 0: SQLite cannot alter a CHECK, so
        -- the table is rebuilt with the same columns, rows, indexes, trigger and seq counter
        -- (message ids tx-<seq> must never repeat). A previous release reading this table
        -- never picks these rows (its head() wants a transaction), so a rollback is safe.
        CREATE TABLE ocpp_outbox_v11 (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL,
            connector INTEGER NOT NULL,
            action TEXT NOT NULL CHECK (action IN (
                'StartTransaction', 'MeterValues', 'StopTransaction', 'SecurityEventNotification'
            )),
            payload TEXT NOT NULL,
            created_ts INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            exhausted INTEGER NOT NULL DEFAULT 0,
            parked INTEGER NOT NULL DEFAULT 0 CHECK (parked IN (0, 1)),
            last_attempt_ts INTEGER,
            last_error TEXT,
            delivered_ts INTEGER
        );
        INSERT INTO ocpp_outbox_v11 SELECT * FROM ocpp_outbox;
        DELETE FROM sqlite_sequence WHERE name = 'ocpp_outbox_v11';
        INSERT INTO sqlite_sequence (name, seq)
            SELECT 'ocpp_outbox_v11', seq FROM sqlite_sequence WHERE name = 'ocpp_outbox';
        DROP TABLE ocpp_outbox;
        ALTER TABLE ocpp_outbox_v11 RENAME TO ocpp_outbox;
        CREATE INDEX ocpp_outbox_pending ON ocpp_outbox (seq) WHERE delivered_ts IS NULL;
        CREATE INDEX ocpp_outbox_session ON ocpp_outbox (session_id, seq);
        CREATE TRIGGER ocpp_outbox_kept
        BEFORE DELETE ON ocpp_outbox WHEN OLD.delivered_ts IS NULL
        BEGIN
            SELECT RAISE(ABORT, 'an undelivered OCPP message is never deleted');
        END;
        """,
    ),
)

LATEST_VERSION: int = MIGRATIONS[-1].version


def statements(sql: str) -> list[str]:
    """Split a migration script into complete statements (triggers' BEGIN...END included).

    `executescript` would commit any open transaction first, so migrations run statement by
    statement inside our own transaction instead.
    """
    out: list[str] = []
    current = ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip() and not _only_comments(current):
        raise ValueError(f"incomplete SQL statement at end of migration: {current.strip()!r}")
    return out


def _only_comments(text: str) -> bool:
    return all(not ln.strip() or ln.strip().startswith("--") for ln in text.splitlines())
