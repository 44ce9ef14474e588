"""Runs components with caching and lineage, the way a TFX orchestrator does.

Each component gets a fingerprint of what determines its outputs: its input
fingerprints, the config sections it reads and the source of the modules that
implement it. A complete earlier execution with the same fingerprint is
reused; otherwise the component runs in `<run_dir>/<component>/`.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from components import lineage

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Source files whose content is part of each component's fingerprint.
COMPONENT_SOURCES = {
    'example_gen': ['components/example_gen.py', 'components/adapters'],
    'statistics_gen': ['components/statistics_gen.py'],
    'schema_gen': ['components/schema_gen.py'],
    'example_validator': ['components/example_validator.py'],
    'transform': ['components/transform.py', 'models/preprocessing.py',
                  'models/tokenization.py', 'models/features.py'],
    'trainer': ['components/trainer.py', 'models', 'serving/warmup.py'],
    'evaluator': ['components/evaluator.py', 'components/metrics.py'],
    'pusher': ['components/pusher.py'],
}


def code_fingerprint(component: str) -> str:
  """SHA-256 of the component's Python sources."""
  digest = hashlib.sha256()
  for relative in COMPONENT_SOURCES[component]:
    path = os.path.join(_REPO_ROOT, relative)
    files = ([os.path.join(root, name)
              for root, _, names in os.walk(path) for name in names
              if name.endswith('.py')] if os.path.isdir(path) else [path])
    for file_path in sorted(files):
      digest.update(os.path.relpath(file_path, _REPO_ROOT).encode('utf-8'))
      with open(file_path, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()


# The input under which each execution records its code and config key.
CONFIG_KEY = 'code_and_config'


def config_key(component: str, config_sections: Sequence[Any]) -> str:
  """Fingerprint of a component's code and the config values it reads."""
  return combine_fingerprints(component, code_fingerprint(component),
                              list(config_sections))


def combine_fingerprints(*parts: Any) -> str:
  blob = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode('utf-8')).hexdigest()


@dataclasses.dataclass
class ComponentOutcome:
  """One component's result in a run."""
  component: str
  status: str  # 'ran' or 'reused'
  output_dir: str
  fingerprint: str
  outputs: Dict[str, Any]
  seconds: float


class ComponentRunner:
  """Runs or reuses components of one pipeline run."""

  def __init__(self, store: lineage.LineageStore, pipeline_name: str,
               run_id: str, run_dir: str, enable_cache: bool = True):
    self.store = store
    self.pipeline_name = pipeline_name
    self.run_id = run_id
    self.run_dir = run_dir
    self.enable_cache = enable_cache
    self.outcomes: List[ComponentOutcome] = []

  def run(self, component: str, inputs: Dict[str, Any],
          config_sections: Sequence[Any],
          execute: Callable[[str], Dict[str, Any]]) -> ComponentOutcome:
    """Run `execute(output_dir)` unless a cached execution matches.

    Args:
      component: the component name.
      inputs: input fingerprints and paths, recorded in the lineage store.
      config_sections: the config values the component reads.
      execute: runs the component into the given folder and returns its
        outputs (JSON-serializable paths and values).

    Returns:
      The outcome, with the outputs of this or the reused execution.
    """
    inputs = {**inputs, CONFIG_KEY: config_key(component, config_sections)}
    fingerprint = combine_fingerprints(component, inputs)
    cached = (self.store.find_complete(self.pipeline_name, component,
                                       fingerprint)
              if self.enable_cache else None)
    if cached:
      self.store.record_reuse(self.run_id, self.pipeline_name, component,
                              cached)
      logging.info('%s: inputs, config and code unchanged; reusing the '
                   'outputs in %s', component, cached['output_dir'])
      outcome = ComponentOutcome(component, 'reused', cached['output_dir'],
                                 fingerprint, cached['outputs'], 0.0)
      self.outcomes.append(outcome)
      return outcome

    output_dir = os.path.join(self.run_dir, component)
    if os.path.isdir(output_dir):
      shutil.rmtree(output_dir)
    os.makedirs(output_dir)
    execution_id = self.store.start_execution(
        self.run_id, self.pipeline_name, component, fingerprint, output_dir,
        inputs)
    started = time.time()
    logging.info('%s: running into %s', component, output_dir)
    try:
      outputs = execute(output_dir)
    except BaseException as e:
      self.store.finish_execution(
          execution_id, lineage.FAILED,
          error=''.join(traceback.format_exception_only(type(e), e)).strip())
      raise
    self.store.finish_execution(execution_id, lineage.COMPLETE, outputs)
    outcome = ComponentOutcome(component, 'ran', output_dir, fingerprint,
                               outputs, time.time() - started)
    self.outcomes.append(outcome)
    return outcome

  def reuse_by_input(self, component: str, key: str, value: Any,
                     config_sections: Sequence[Any],
                     accept: Callable[[Dict[str, Any]], bool]
                     ) -> Optional[ComponentOutcome]:
    """Reuse the newest complete execution that read input `key` = `value`.

    Only executions with the same code and config, whose outputs `accept`
    takes, qualify. Used when the candidate model is already the served
    version: the evaluation that blessed it and the push that shipped it
    are still valid.
    """
    if not self.enable_cache:
      return None
    required = {key: value, CONFIG_KEY: config_key(component, config_sections)}
    for cached in self.store.find_complete_with_inputs(
        self.pipeline_name, component, required):
      if not accept(cached['outputs']):
        continue
      self.store.record_reuse(self.run_id, self.pipeline_name, component,
                              cached)
      logging.info('%s: the model is already served; reusing the outputs '
                   'in %s', component, cached['output_dir'])
      outcome = ComponentOutcome(component, 'reused', cached['output_dir'],
                                 cached['fingerprint'], cached['outputs'],
                                 0.0)
      self.outcomes.append(outcome)
      return outcome
    return None

  def previous_outputs(self, component: str) -> Optional[Dict[str, Any]]:
    """Outputs of the component's latest complete execution in another run."""
    previous = self.store.latest_complete(self.pipeline_name, component,
                                          self.run_id)
    return previous['outputs'] if previous else None
