"""Amazon fine-food reviews: one example per review, with three labels.

The snapshot is the dataset's `Reviews.csv` (or a glob of files in its format):
RFC 4180 CSV with the header Id, ProductId, UserId, ProfileName,
HelpfulnessNumerator, HelpfulnessDenominator, Score, Time, Summary, Text.
Review texts contain quoted line breaks, so a file is read whole by one worker.

Labels are strings, '' meaning no label:
- `sentiment`: Score 1-2 `negative`, 3 `neutral`, 4-5 `positive`.
- `rating`: the Score, `1` to `5`.
- `helpful`: `helpful` when at least half of the votes found the review
  helpful, `not_helpful` otherwise, and '' when the review has no votes.
"""

from typing import Dict, Iterator, List, Optional

import apache_beam as beam

from components.adapters import base
from components.adapters import readers

COLUMNS = ('Id', 'ProductId', 'UserId', 'ProfileName', 'HelpfulnessNumerator',
           'HelpfulnessDenominator', 'Score', 'Time', 'Summary', 'Text')

_FEATURE_TYPES = {
    'example_id': base.STRING,
    'product_id': base.STRING,
    'user_id': base.STRING,
    'time': base.INT,
    'summary': base.STRING,
    'text': base.STRING,
    'helpfulness_numerator': base.INT,
    'helpfulness_denominator': base.INT,
    'sentiment': base.STRING,
    'rating': base.STRING,
    'helpful': base.STRING,
}

_SENTIMENTS = {1: 'negative', 2: 'negative', 3: 'neutral', 4: 'positive',
               5: 'positive'}

# The share of helpful votes from which a review counts as helpful.
_HELPFUL_THRESHOLD = 0.5


class AmazonFineFoodAdapter(base.DatasetAdapter):
  """Reads Amazon fine-food review CSVs: `data_path` is a file or a glob."""

  name = 'amazon_fine_food'

  def feature_types(self) -> Dict[str, str]:
    return dict(_FEATURE_TYPES)

  def input_files(self) -> List[str]:
    return readers.match_files(self.data_path)

  def read(self, pipeline: beam.Pipeline) -> base.AdapterOutput:
    rows = readers.read_csv_rows(pipeline, self.data_path, 'Reviews',
                                 _check_header)
    parsed = readers.parse_rows(rows.rows, 'ParseReviews', _review_examples)
    rejected = ((rows.rejected, parsed[readers.REJECTED])
                | 'FlattenRejectedReviews' >> beam.Flatten())
    return base.AdapterOutput(parsed.parsed, rejected, rows.input_rows)


def _check_header(header: List[str]) -> Optional[str]:
  if tuple(header) == COLUMNS:
    return None
  return (f'Not read because the file header is {",".join(header)!r}, '
          f'but Amazon fine-food reviews have {",".join(COLUMNS)!r}.')


def _review_examples(row: readers.Row) -> Iterator[Dict]:
  """Yield the one example of a review row; raise InvalidRowError if bad."""
  values = row.values
  review_id = values['Id'].strip()
  if not review_id:
    raise readers.InvalidRowError('Column Id is empty.')

  score = readers.parse_int(values['Score'], 'Score')
  if score not in _SENTIMENTS:
    raise readers.InvalidRowError(
        f'Column Score is {readers.quote_value(values["Score"])}; it must be '
        '1 to 5.')
  time = readers.parse_int(values['Time'], 'Time')
  if time < 0:
    raise readers.InvalidRowError(
        f'Column Time is {time}; Unix seconds cannot be negative.')
  numerator, denominator = _helpfulness_votes(values)

  yield {
      'example_id': review_id,
      'product_id': values['ProductId'],
      'user_id': values['UserId'],
      'time': time,
      'summary': values['Summary'],
      'text': values['Text'],
      'helpfulness_numerator': numerator,
      'helpfulness_denominator': denominator,
      'sentiment': _SENTIMENTS[score],
      'rating': str(score),
      'helpful': _helpful_label(numerator, denominator),
  }


def _helpfulness_votes(values: Dict[str, str]):
  numerator = readers.parse_int(values['HelpfulnessNumerator'],
                                'HelpfulnessNumerator')
  denominator = readers.parse_int(values['HelpfulnessDenominator'],
                                  'HelpfulnessDenominator')
  if numerator < 0 or denominator < 0:
    raise readers.InvalidRowError(
        f'Helpfulness votes cannot be negative: HelpfulnessNumerator is '
        f'{numerator} and HelpfulnessDenominator is {denominator}.')
  if numerator > denominator:
    raise readers.InvalidRowError(
        f'HelpfulnessNumerator ({numerator}) is greater than '
        f'HelpfulnessDenominator ({denominator}); the helpful votes are a '
        'part of all votes.')
  return numerator, denominator


def _helpful_label(numerator: int, denominator: int) -> str:
  if denominator == 0:
    return ''
  if numerator / denominator >= _HELPFUL_THRESHOLD:
    return 'helpful'
  return 'not_helpful'
