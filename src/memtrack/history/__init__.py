"""Recorded history: snapshots appended to an SQLite database, read back as time series.

schema: the tables, and how numbers and names are stored; recorder: Recorder, the writer;
load: load() and the History it returns; analysis: trends and suspected leaks (report), per
process and per group of processes (group_spans).
"""
from .analysis import Finding, Trend, analyze, dumps, group_spans, runs_of, trend, trend_runs
from .load import BufRow, History, Hold, ProcRow, load, prefix_sums
from .recorder import Recorder, category_of
from .schema import SCHEMA_VERSION, check_path_writable, write_transaction

__all__ = ["SCHEMA_VERSION", "BufRow", "Finding", "History", "Hold", "ProcRow", "Recorder", "Trend",
           "analyze", "category_of", "check_path_writable", "dumps", "group_spans", "load", "prefix_sums", "runs_of",
           "trend", "trend_runs", "write_transaction"]
