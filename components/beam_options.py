"""Beam pipeline options shared by the components.

Flags the user passes win. Without `--runner`, pipelines run on Beam's
FnApiRunner, the local engine behind the DirectRunner, which honours
`--direct_running_mode` and `--direct_num_workers`. Beam 2.77's DirectRunner
first tries its Prism runner, which downloads a binary from GitHub at run
time, so naming the engine directly keeps local runs offline.
"""

from typing import List, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

LOCAL_RUNNER = 'FnApiRunner'
LOCAL_RUNNING_MODE = 'in_memory'


def _has_flag(args: Sequence[str], flag: str) -> bool:
  return any(arg == flag or arg.startswith(flag + '=') for arg in args)


def with_local_defaults(beam_args: Optional[Sequence[str]]) -> List[str]:
  """Beam flags with the local runner and running mode filled in."""
  args = list(beam_args or [])
  if not _has_flag(args, '--runner'):
    args.append(f'--runner={LOCAL_RUNNER}')
  if not _has_flag(args, '--direct_running_mode'):
    args.append(f'--direct_running_mode={LOCAL_RUNNING_MODE}')
  return args


def pipeline_options(beam_args: Optional[Sequence[str]]) -> PipelineOptions:
  """`PipelineOptions` from the user's Beam flags and the local defaults."""
  return PipelineOptions(with_local_defaults(beam_args))
