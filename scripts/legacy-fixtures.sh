#!/usr/bin/env bash
# Makes sure the C libraries the legacy-format tests compare against are installed:
# python3-gdbm (dbm.gnu for Debian's /usr/bin/python3), gdbmtool (numsync GDBM files) and
# db5.3-util (db_dump/db_load: byte-swapped Berkeley DB files). Debian's python3 already has
# dbm.ndbm on Berkeley DB 5.3. The fixtures themselves are generated at test time by
# scripts/legacy-fixtures.py (called from the Rust and Python tests).
#
# Under CI=true a missing tool that cannot be installed is an error; elsewhere the script says
# what is missing and the legacy tests skip with that reason.
set -euo pipefail

have() {
    [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import dbm.gnu, dbm.ndbm' 2>/dev/null &&
        command -v gdbmtool >/dev/null && command -v db5.3_load >/dev/null
}

if have; then
    exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== installing python3-gdbm gdbmtool db5.3-util (legacy-format fixtures) =="
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q python3-gdbm gdbmtool db5.3-util >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q python3-gdbm gdbmtool db5.3-util >/dev/null; }
fi
if have; then
    exit 0
fi
msg="legacy-format fixtures need /usr/bin/python3 with dbm.gnu and dbm.ndbm, gdbmtool and db5.3-util (apt-get install python3-gdbm gdbmtool db5.3-util)"
if [ "${CI:-}" = "true" ]; then
    echo "error: $msg" >&2
    exit 1
fi
echo "note: $msg; the legacy tests will skip" >&2
