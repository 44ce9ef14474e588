"""The lineage store: what each component execution read and wrote.

A small SQLite database under the pipeline root (ml-metadata has no build for
this Python beside current protobuf). Each execution is keyed by a
fingerprint of its inputs, config sections and code. A later execution with
the same fingerprint reuses the stored outputs instead of running again.
"""

import contextlib
import json
import os
import sqlite3
import time
from typing import Any, Dict, List, Optional

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY,
  pipeline_name TEXT NOT NULL,
  config_path TEXT,
  data_path TEXT,
  started_at REAL,
  finished_at REAL,
  status TEXT
);
CREATE TABLE IF NOT EXISTS executions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id TEXT NOT NULL,
  pipeline_name TEXT NOT NULL,
  component TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  status TEXT NOT NULL,
  reused_execution INTEGER,
  output_dir TEXT,
  inputs TEXT,
  outputs TEXT,
  error TEXT,
  started_at REAL,
  finished_at REAL
);
CREATE INDEX IF NOT EXISTS executions_by_fingerprint
  ON executions (pipeline_name, component, fingerprint, status);
"""

RUNNING = 'running'
COMPLETE = 'complete'
FAILED = 'failed'
REUSED = 'reused'


class LineageStore:
  """Records runs and component executions in `<pipeline_root>/lineage.sqlite`."""

  def __init__(self, pipeline_root: str):
    os.makedirs(pipeline_root, exist_ok=True)
    self.path = os.path.join(pipeline_root, 'lineage.sqlite')
    with self._connect() as connection:
      connection.executescript(_SCHEMA)

  @contextlib.contextmanager
  def _connect(self):
    connection = sqlite3.connect(self.path, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
      with connection:
        yield connection
    finally:
      connection.close()

  def start_run(self, run_id: str, pipeline_name: str, config_path: str,
                data_path: str) -> None:
    with self._connect() as connection:
      connection.execute(
          'INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL, ?)',
          (run_id, pipeline_name, config_path, data_path, time.time(),
           RUNNING))

  def finish_run(self, run_id: str, status: str) -> None:
    with self._connect() as connection:
      connection.execute(
          'UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ?',
          (time.time(), status, run_id))

  def find_complete(self, pipeline_name: str, component: str,
                    fingerprint: str) -> Optional[Dict[str, Any]]:
    """Return the newest complete execution with this fingerprint.

    Executions whose output folder was deleted are skipped; None if none is
    left.
    """
    with self._connect() as connection:
      rows = connection.execute(
          'SELECT * FROM executions WHERE pipeline_name = ? AND component = ?'
          ' AND fingerprint = ? AND status = ? ORDER BY id DESC',
          (pipeline_name, component, fingerprint, COMPLETE)).fetchall()
    for row in rows:
      if row['output_dir'] and os.path.isdir(row['output_dir']):
        return _row_dict(row)
    return None

  def find_complete_with_inputs(self, pipeline_name: str, component: str,
                                required: Dict[str, Any]
                                ) -> List[Dict[str, Any]]:
    """Return complete executions whose inputs include `required`.

    Newest first; executions whose output folder was deleted are skipped.
    """
    with self._connect() as connection:
      rows = connection.execute(
          'SELECT * FROM executions WHERE pipeline_name = ? AND component = ?'
          ' AND status = ? ORDER BY id DESC',
          (pipeline_name, component, COMPLETE)).fetchall()
    found = []
    for row in rows:
      execution = _row_dict(row)
      if (all(execution['inputs'].get(k) == v for k, v in required.items())
          and execution['output_dir'] and
          os.path.isdir(execution['output_dir'])):
        found.append(execution)
    return found

  def latest_complete(self, pipeline_name: str, component: str,
                      exclude_run_id: str) -> Optional[Dict[str, Any]]:
    """Return the newest complete execution of a component in another run."""
    with self._connect() as connection:
      row = connection.execute(
          'SELECT * FROM executions WHERE pipeline_name = ? AND component = ?'
          ' AND status = ? AND run_id != ? ORDER BY id DESC LIMIT 1',
          (pipeline_name, component, COMPLETE, exclude_run_id)).fetchone()
    return _row_dict(row) if row else None

  def start_execution(self, run_id: str, pipeline_name: str, component: str,
                      fingerprint: str, output_dir: str,
                      inputs: Dict[str, Any]) -> int:
    with self._connect() as connection:
      cursor = connection.execute(
          'INSERT INTO executions (run_id, pipeline_name, component, '
          'fingerprint, status, output_dir, inputs, started_at) '
          'VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
          (run_id, pipeline_name, component, fingerprint, RUNNING, output_dir,
           json.dumps(inputs, default=str), time.time()))
      return int(cursor.lastrowid)

  def finish_execution(self, execution_id: int, status: str,
                       outputs: Optional[Dict[str, Any]] = None,
                       error: Optional[str] = None) -> None:
    with self._connect() as connection:
      connection.execute(
          'UPDATE executions SET status = ?, outputs = ?, error = ?, '
          'finished_at = ? WHERE id = ?',
          (status, json.dumps(outputs or {}, default=str), error, time.time(),
           execution_id))

  def record_reuse(self, run_id: str, pipeline_name: str, component: str,
                   cached: Dict[str, Any]) -> None:
    with self._connect() as connection:
      connection.execute(
          'INSERT INTO executions (run_id, pipeline_name, component, '
          'fingerprint, status, reused_execution, output_dir, inputs, '
          'outputs, started_at, finished_at) '
          'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
          (run_id, pipeline_name, component, cached['fingerprint'], REUSED,
           cached['id'], cached['output_dir'], json.dumps(cached['inputs']),
           json.dumps(cached['outputs']), time.time(), time.time()))


def _row_dict(row: sqlite3.Row) -> Dict[str, Any]:
  result = dict(row)
  for key in ('inputs', 'outputs'):
    result[key] = json.loads(result[key]) if result.get(key) else {}
  return result
