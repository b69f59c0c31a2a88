#!/usr/bin/env python3
"""Usage: qpy_admin.py tick
       qpy_admin.py nodes <file>
       qpy_admin.py status
       qpy_admin.py set [<key> <value>]
       qpy_admin.py (-h | --help)

The administrator's side of qpy, on the same state as the users' qpy (QPY_STATE, the site
file next to qpy.py, or ~/.qpy; see the README).

Commands:
  tick          Harvest ended jobs and start what can start (run it from cron or a timer).
  nodes <file>  Load the nodes file: one node per line, either the manual's
                '<name> <cores> [M]' or '<name> address=<host> cores=<n> memory=<GB>
                attributes=a,b pref_multicore=true'. Jobs running on the nodes are kept.
  status        The users and nodes table, as 'qpy status'.
  set           Show the site settings; with <key> <value>, change one
                (launch_timeout, kill_grace: seconds).
"""
import sys

import qpy

SETTINGS = ("launch_timeout", "kill_grace")


def load_nodes(path):
    try:
        with open(path) as f:
            nodes = qpy.parse_nodes_file(f.read())
    except OSError as e:
        raise qpy.QpyError("Cannot read the nodes file: %s" % e)

    def replace(db):
        db.execute("DELETE FROM nodes")
        for position, node in enumerate(nodes):
            db.execute("INSERT INTO nodes (name, address, cores, mem, gpus, attributes, "
                       "pref_multicore, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (node["name"], node["address"], node["cores"], node["mem"], node["gpus"],
                        node["attributes"], node["pref_multicore"], position))
        qpy.request_tick(db)
    qpy.atomically(replace)
    print("Nodes loaded: %s." % ", ".join(node["name"] for node in nodes))


def settings(key, value):
    if key is None:
        rows = qpy.atomically(lambda db: db.execute(
            "SELECT key, value FROM meta WHERE key IN (%s)" % ",".join("?" * len(SETTINGS)),
            SETTINGS).fetchall(), write=False)
        for row in rows:
            print("%s = %s" % (row["key"], row["value"]))
        return
    if key not in SETTINGS:
        raise qpy.QpyError("Unknown setting: %s (settings: %s)" % (key, ", ".join(SETTINGS)))
    try:
        if float(value) < 0:
            raise ValueError
    except ValueError:
        raise qpy.QpyError("Value for %s must be a number of seconds, not %r." % (key, value))
    qpy.atomically(lambda db: db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key)))
    print("%s set to %s." % (key, value))


def main(argv=None):
    import docopt
    try:
        args = docopt.docopt(__doc__, sys.argv[1:] if argv is None else argv)
    except docopt.DocoptExit:
        sys.stderr.write("qpy_admin.py: wrong arguments. Try 'qpy_admin.py --help'.\n")
        return 1
    try:
        if args["tick"]:
            qpy.tick()
        elif args["nodes"]:
            load_nodes(args["<file>"])
        elif args["status"]:
            qpy.cmd_status({})
        elif args["set"]:
            settings(args["<key>"], args["<value>"])
    except qpy.QpyError as e:
        sys.stderr.write("qpy_admin.py: %s\n" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
