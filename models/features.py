"""Names of transformed features, labels and model outputs.

Raw feature names come from the config. These helpers derive the names that
the transform graph writes and the model reads, so that both sides agree.
"""

# The joined token sequence of all text features, as int64 ids.
TOKENS = 'tokens'

# Reserved token ids: 0 pads, 1 starts every sequence so that no sequence is
# empty (cuDNN rejects zero-length sequences), vocabulary ids start at 2.
PAD_ID = 0
BOS_ID = 1
FIRST_TOKEN_ID = 2

# Reserved id for an empty categorical value or a padded id-sequence slot.
MISSING_ID = 0

# Label id of an example that has no label for a task (sample weight 0).
NO_LABEL = -1

# Vocabulary file names written by the transform graph.
TOKEN_VOCABULARY = 'tokens'


def id_feature(raw_name: str) -> str:
  """Transformed name of a categorical feature."""
  return f'{raw_name}_id'


def id_sequence_feature(raw_name: str) -> str:
  """Transformed name of an id-sequence feature."""
  return f'{raw_name}_ids'


def numeric_feature(raw_name: str) -> str:
  """Transformed name of a z-scored numeric feature."""
  return f'{raw_name}_z'


def label_feature(task_name: str) -> str:
  """Transformed name of a task's label id."""
  return f'{task_name}_label'


def id_vocabulary(vocabulary_name: str) -> str:
  """Vocabulary file name of an id vocabulary."""
  return f'ids_{vocabulary_name}'


def label_vocabulary(task_name: str) -> str:
  """Vocabulary file name of a task's label values."""
  return f'labels_{task_name}'


def probabilities_output(task_name: str) -> str:
  """Served output key of a task's class probabilities."""
  return f'{task_name}_probabilities'


def label_output(task_name: str) -> str:
  """Served output key of a task's decoded label string."""
  return f'{task_name}_label'


def tower_output(task_name: str, tower: str) -> str:
  """Model output key of a retrieval task's `query` or `candidate` embedding."""
  return f'{task_name}_{tower}_embedding'


def score_output(task_name: str) -> str:
  """Served output key of a retrieval task's query-candidate affinity."""
  return f'{task_name}_score'
