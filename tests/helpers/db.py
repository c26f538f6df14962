"""SQLite look-ups for the history tests."""
import sqlite3


def rows(db, table):
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()
