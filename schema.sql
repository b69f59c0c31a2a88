-- qpy state: the one SQLite database every qpy command, runner and tick shares.
--
-- Journal mode DELETE (never WAL: the file may live on NFS), synchronous=FULL.
-- Every write happens under <state>/qpy.lock and inside BEGIN IMMEDIATE (see qpy.py).
-- Times are Unix seconds (REAL). Memory is in GB (REAL).

-- The schema version is PRAGMA user_version (set at the end of this file).

-- Two files, so that only the administrator can change how the site is set up:
--   <state>/site/site.db  the site: nodes and pools, allowed users, distribution rules,
--                    settings and the finish/start switch. It (0644) and site/ (0755) belong to
--                    the administrator (the owner of the state directory, or root), in a
--                    sticky directory: everyone else reads it, nobody else can change, replace
--                    or plant anything beside it. Everyone ATTACHes it read-only and immutable
--                    as `site`; qpy_admin.py changes it by writing a copy and renaming it into
--                    place (so it never has a journal).
--   <state>/qpy.db   the queue, shared by the group: jobs, users, what the ticks found.
-- A connection checks site.db and site/ before it attaches it (qpy.py attach_site).
-- (A queue made anew beside a site.db keeps that site: IF NOT EXISTS, OR IGNORE.)

-- The site's settings (qpy_admin.py set, start, finish, distribute).
--   dispatch        1: ticks start jobs; 0: nothing starts (qpy_admin.py finish / start)
--   launch_timeout  seconds a claimed job may wait for its runner before it is queued again
--   kill_grace      seconds between SIGTERM and SIGKILL when a job is killed
--   heartbeat       seconds between two touches of a running job's heartbeat file
--   node_timeout    seconds without heartbeat after which a job's node is declared lost
--   probe_interval  seconds between two ssh probes of a node that is down
--   ssh_timeout     seconds ssh may take to connect to a node
--   rules           the distribution rules as JSON (qpy_admin.py distribute); absent: even
CREATE TABLE IF NOT EXISTS site.settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO site.settings (key, value) VALUES
    ('dispatch', '1'), ('launch_timeout', '60'), ('kill_grace', '10'), ('heartbeat', '30'),
    ('node_timeout', '180'), ('probe_interval', '60'), ('ssh_timeout', '10');

-- Where jobs run (qpy_admin.py nodes, add, remove, drain, resume). In personal mode there is
-- one node, 'localhost', started by fork. A node of another kind than 'host' is a pool
-- (qpy.py POOLS: 'slurm', a Slurm partition that qpy hands jobs to with sbatch, from this
-- machine, as the job's owner, and follows with one squeue per tick); its cores are the most
-- qpy uses there at once. What the ticks find of each node is in node_health (qpy.db); the
-- `nodes` that queries read is a view of both (qpy.py NODES_VIEW): its state is 'down' if the
-- ticks found it down, else 'drained' if drained, else 'up'.
CREATE TABLE IF NOT EXISTS site.nodes (
    name           TEXT PRIMARY KEY,             -- what users see (%n, QPY_NODE)
    kind           TEXT NOT NULL DEFAULT 'host', -- 'host', or a kind of pool (qpy.py POOLS)
    address        TEXT NOT NULL,                -- ssh target; 'localhost' = fork, no ssh
    cores          INTEGER NOT NULL CHECK (cores >= 0),
    mem            REAL CHECK (mem >= 0),        -- GB; NULL: not known, not limited
    gpus           INTEGER NOT NULL DEFAULT 0 CHECK (gpus >= 0),
    attributes     TEXT NOT NULL DEFAULT '',     -- comma separated labels
    pref_multicore INTEGER NOT NULL DEFAULT 0,   -- the manual's 'M': keep for multicore jobs
    drained        TEXT,                         -- why no new job starts there (drain); NULL:
                                                 -- jobs start there
    position       INTEGER NOT NULL DEFAULT 0,   -- order of the nodes file
    max_jobs       INTEGER CHECK (max_jobs >= 1),  -- a pool: at most this many qpy jobs at once
    options        TEXT                          -- a pool: its own settings, JSON (for Slurm:
                                                 -- partition, account, qos, extra, time)
);

-- allowed_users, loaded by qpy_admin.py users: when it has rows, only they may submit, and
-- the cores are shared among them; when empty, among everyone in the users table.
CREATE TABLE IF NOT EXISTS site.allowed_users (
    name TEXT PRIMARY KEY
);

PRAGMA site.user_version = 9;

-- Key/value facts of the queue.
--   tick_wanted     ticks asked for anybody's jobs (cores freed, a node back...): any tick
--                   takes it on, handing on to users.wanted what it cannot start itself
--   last_tick       when the last tick pass ran (qpy_admin.py doctor reports it)
--   tick_passes     how many tick passes ran so far
--   status_page     the status page the timer's tick last wrote, JSON {file, at, every}
--                   (qpy_admin.py tick --report; doctor says how old it is)
--   state_id        this state's identity, made with the DB and kept in <state>/qpy.id too:
--                   a DB lost or replaced is refused, and nothing of another state (an exit
--                   record, a runner) is ever taken for this one's
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES
    ('tick_wanted', '0'), ('state_id', lower(hex(randomblob(8))));

-- What the ticks found of each node of site.nodes (no row: up). Any tick writes it.
CREATE TABLE node_health (
    name      TEXT PRIMARY KEY,
    state     TEXT NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down')),
    reason    TEXT,                  -- why it is down
    probed_at REAL,                  -- last ssh probe of a node that is down
    lost      TEXT                   -- jobs given up with it while it did not answer, JSON
                                     -- [[id, attempt, user]...]: what they left running is
                                     -- stopped once it answers again, before it is up (for
                                     -- a pool: cancels owed); after a failed try an entry
                                     -- is [id, attempt, user, failed tries, last try]
);

-- One row per user who ever used this state directory.
CREATE TABLE users (
    name     TEXT PRIMARY KEY,
    paused   INTEGER NOT NULL DEFAULT 0,  -- ctrlQueue pause: nothing of this user starts
    finished INTEGER NOT NULL DEFAULT 0,  -- qpy finish: nothing starts until qpy restart
    wanted   INTEGER NOT NULL DEFAULT 0   -- ticks asked for this user's jobs (by their qpy
                                          -- sub, or handed on by another user's tick)
);

-- A user's settings changed with 'qpy config'; absent keys have their default (qpy.py CONFIG).
CREATE TABLE config (
    user  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,                  -- JSON
    PRIMARY KEY (user, key)
);

-- Every job, from 'qpy sub' until 'qpy clean'.
--
-- Life cycle:  queue -> starting -> running -> done | failed | killed
--              queue -> undone (killed while queued)
-- 'starting' means claimed by a tick, runner not yet confirmed; users see it as 'queue'.
-- Every status change is one guarded UPDATE in qpy.py's "Jobs: life cycle" section.
-- Beside the row, the runner keeps files of its attempt in <state>/users/<user>/run/:
-- <id>.<attempt>.started (created with O_EXCL when it confirms: '<attempt>', then 'go' when
-- the command is told to run, then the command's process group), <id>.<attempt>.hb (its
-- heartbeat), <id>.<attempt>.exit (the exit record, written before the row is updated: JSON
-- with the state's identity and the attempt) and, in a pool, <id>.<attempt>.batch (the
-- pool's output of the batch script, kept until qpy clean).
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after clean
    user        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queue' CHECK (status IN
                  ('queue', 'starting', 'running', 'done', 'failed', 'killed', 'undone')),
    command     TEXT NOT NULL,            -- as the user typed it (shown by %c)
    cwd         TEXT NOT NULL,            -- submission directory: job_<id>.out/.err go here
    spec        TEXT NOT NULL,            -- job file in the owner's directory: argv and environment
    n_cores     INTEGER NOT NULL CHECK (n_cores >= 1),
    mem         REAL NOT NULL CHECK (mem >= 0),
    gpus        INTEGER NOT NULL DEFAULT 0 CHECK (gpus >= 0),
    gpu_ids     TEXT,                     -- the GPU indices it holds on its node ('0,1')
    attributes  TEXT NOT NULL DEFAULT '', -- node attribute expression ('' = any node)
    position    REAL NOT NULL,            -- queue order (FIFO, changed by ctrlQueue jump)
    node        TEXT,                     -- where it runs or ran
    external_id TEXT,                     -- its job ID in its pool (Slurm's), when it has one (%I)
    refusal     TEXT,                     -- its pool refused it though the pool answers: JSON
                                          -- {node, why, until}; not placed there before until
    attempt     INTEGER NOT NULL DEFAULT 0,  -- claims so far; a runner must match the latest
    queued_at   REAL NOT NULL,
    claimed_at  REAL,
    started_at  REAL,
    ended_at    REAL,
    runner_pid  INTEGER,                  -- on the node
    runner_boot TEXT,                     -- start time of runner_pid (guards against pid reuse)
    kill_requested INTEGER NOT NULL DEFAULT 0,
    requeue     INTEGER NOT NULL DEFAULT 0,   -- queue it again (not failed) if its node is lost
    name        TEXT,                     -- qpy sub -N (shown by %J)
    time_limit  REAL,                     -- seconds; the runner stops the job after it
    dependencies TEXT,                    -- JSON [[kind, job id]...]; kind: after, afterok, afternotok
    array_of    INTEGER,                  -- first job ID of its array (qpy sub --array)
    array_index INTEGER,                  -- QPY_ARRAY_INDEX
    array_limit INTEGER,                  -- at most this many jobs of the array run at once
    exit_code   INTEGER,                  -- exit status, or NULL when ended by a signal
    signal      INTEGER,                  -- terminating signal, if any
    reason      TEXT,                     -- why it failed or did not run
    max_rss     INTEGER,                  -- KB
    cpu_time    REAL,                     -- seconds, user + system
    waited      INTEGER NOT NULL DEFAULT 0,  -- ended and reported by a qpy wait: a bare
                                          -- qpy wait covers the live jobs and the ended
                                          -- ones not yet waited for
    held        INTEGER NOT NULL DEFAULT 0,  -- qpy hold: queued, not started until released
    outputs     TEXT                      -- sub --output/--error: JSON {out, err: pattern}
);

-- The tick and 'check running' look only at live jobs: never scan the history.
CREATE INDEX jobs_live ON jobs (status, position) WHERE status IN ('queue', 'starting', 'running');
CREATE INDEX jobs_queued ON jobs (user, position) WHERE status = 'queue';  -- each user's front
CREATE INDEX jobs_by_user ON jobs (user, position);
-- each pass checks the dependencies of the queued jobs that have some, and only those
CREATE INDEX jobs_with_dependencies ON jobs (position)
    WHERE status = 'queue' AND dependencies IS NOT NULL;
-- each pass notes why held jobs wait (and counts them out of the fair share's queues)
CREATE INDEX jobs_held ON jobs (position) WHERE status = 'queue' AND held = 1;
-- the jobs of an array share one job file: it goes when the last of them has ended
CREATE INDEX jobs_live_by_spec ON jobs (spec) WHERE status IN ('queue', 'starting', 'running');

-- Free-text notes on a job ('qpy notes'), shown by %K, removed by 'qpy clean'.
CREATE TABLE notes (
    job_id   INTEGER NOT NULL,
    added_at REAL NOT NULL,
    text     TEXT NOT NULL
);
CREATE INDEX notes_by_job ON notes (job_id);

-- The accounting record of every job that ended, written by the status change that ends it
-- (qpy.py move: the columns of HISTORY_COLUMNS, copied from its row) and kept after
-- 'qpy clean' until 'qpy_admin.py prune': what 'qpy history' lists (Slurm's sacct).
CREATE TABLE history (
    id          INTEGER PRIMARY KEY,      -- the job's ID
    user        TEXT NOT NULL,
    name        TEXT,
    status      TEXT NOT NULL,            -- done, failed, killed or undone
    reason      TEXT,
    command     TEXT NOT NULL,
    cwd         TEXT NOT NULL,
    node        TEXT,
    external_id TEXT,
    n_cores     INTEGER NOT NULL,
    mem         REAL NOT NULL,
    gpus        INTEGER NOT NULL,
    gpu_ids     TEXT,
    attributes  TEXT NOT NULL,
    time_limit  REAL,
    dependencies TEXT,
    array_of    INTEGER,
    array_index INTEGER,
    array_limit INTEGER,
    requeue     INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    queued_at   REAL NOT NULL,
    started_at  REAL,
    ended_at    REAL NOT NULL,
    exit_code   INTEGER,
    signal      INTEGER,
    max_rss     INTEGER,
    cpu_time    REAL
);
CREATE INDEX history_by_user ON history (user, ended_at);
CREATE INDEX history_by_end ON history (ended_at);

PRAGMA user_version = 10;
