"""MIND news: a story's category, and clicks on stories shown to a user.

`data_path` is a folder with MIND's two tab-separated files, without header:
- `news.tsv`: news id, category, subcategory, title, abstract, URL, title
  entities, abstract entities.
- `behaviors.tsv`: impression id, user id, time (`MM/DD/YYYY HH:MM:SS AM/PM`,
  read as UTC), click history (space-separated news ids), impressions
  (space-separated `newsid-label`, label 1 for clicked, 0 for not clicked).

Two kinds of examples share one dataset, each labelled for one task:
- a story (one per news.tsv row): `category` set, `click` '', `time` 0, and
  `example_id` the news id;
- a shown story (one per impression entry): `click` '0' or '1', `category` '',
  and `example_id` `<impression id>-<position>`, the position counting from 1.
A shown story gets its title, abstract and subcategory from news.tsv. Where
news.tsv has no row for its id, they are '' and the example is still kept.

NOTE: MIND's test set has impressions without labels (`N1234` instead of
`N1234-0`); this adapter rejects those rows.
"""

import datetime
import os
from typing import Dict, Iterator, List

import apache_beam as beam

from components.adapters import base
from components.adapters import readers

NEWS_FILE = 'news.tsv'
BEHAVIORS_FILE = 'behaviors.tsv'
_NEWS_COLUMNS = 8
_BEHAVIORS_COLUMNS = 5
_TIME_FORMAT = '%m/%d/%Y %I:%M:%S %p'

_FEATURE_TYPES = {
    'example_id': base.STRING,
    'news_id': base.STRING,
    'impression_id': base.STRING,
    'user_id': base.STRING,
    'history': base.STRING_LIST,
    'time': base.INT,
    'title': base.STRING,
    'abstract': base.STRING,
    'subcategory': base.STRING,
    'category': base.STRING,
    'click': base.STRING,
}

# Tags of the two sides of the join.
_STORIES = 'stories'
_SHOWN = 'shown'


class MindAdapter(base.DatasetAdapter):
  """Reads MIND's news.tsv and behaviors.tsv from the `data_path` folder."""

  name = 'mind'

  def feature_types(self) -> Dict[str, str]:
    return dict(_FEATURE_TYPES)

  def input_files(self) -> List[str]:
    paths = [os.path.join(self.data_path, f)
             for f in (NEWS_FILE, BEHAVIORS_FILE)]
    missing = [p for p in paths if not readers.match_files(p)]
    if missing:
      raise FileNotFoundError(
          f'MIND file(s) not found: {missing}. data.path must be a folder '
          f'with {NEWS_FILE} and {BEHAVIORS_FILE}.')
    return paths

  def read(self, pipeline: beam.Pipeline) -> base.AdapterOutput:
    news_path, behaviors_path = self.input_files()
    news = readers.read_text_lines(pipeline, news_path, 'News')
    stories = readers.parse_rows(news.rows, 'ParseNews', _keyed_story)

    behaviors = readers.read_text_lines(pipeline, behaviors_path, 'Behaviors')
    shown = readers.parse_rows(behaviors.rows, 'ParseImpressions',
                               _keyed_shown_stories)

    # CoGroupByKey, not a side input: a side input would copy every story to
    # every worker, which does not scale to full MIND's 100K+ stories.
    joined = ({_STORIES: stories.parsed, _SHOWN: shown.parsed}
              | 'JoinStoriesWithImpressions' >> beam.CoGroupByKey()
              | 'BuildNewsExamples' >> beam.ParDo(
                  _BuildExamples()).with_outputs(readers.REJECTED,
                                                 main='examples'))

    rejected = ((news.rejected, stories[readers.REJECTED], behaviors.rejected,
                 shown[readers.REJECTED], joined[readers.REJECTED])
                | 'FlattenRejectedRows' >> beam.Flatten())
    input_rows = ((news.input_rows, behaviors.input_rows)
                  | 'FlattenInputRowCounts' >> beam.Flatten())
    return base.AdapterOutput(joined.examples, rejected, input_rows)


def _split_columns(row: readers.Row, expected: int,
                   file_name: str) -> List[str]:
  columns = row.raw.split('\t')
  if len(columns) != expected:
    raise readers.InvalidRowError(
        f'The {file_name} row has {len(columns)} tab-separated columns; MIND has '
        f'{expected}.')
  return columns


def _keyed_story(row: readers.Row) -> Iterator:
  """Yield `(news id, story example)` for a news.tsv row."""
  columns = _split_columns(row, _NEWS_COLUMNS, NEWS_FILE)
  news_id, category, subcategory, title, abstract = columns[:5]
  if not news_id.strip():
    raise readers.InvalidRowError('The news id (column 1) is empty.')
  story = base.empty_example(_FEATURE_TYPES)
  story.update(example_id=news_id, news_id=news_id, category=category,
               subcategory=subcategory, title=title, abstract=abstract)
  # The source and row go along so that a duplicate id can be rejected.
  yield news_id, (row.source, row.row, row.raw, story)


def _keyed_shown_stories(row: readers.Row) -> Iterator:
  """Yield `(news id, example without text)` for each story an impression
  showed."""
  columns = _split_columns(row, _BEHAVIORS_COLUMNS, BEHAVIORS_FILE)
  impression_id, user_id, time_text, history, impressions = columns
  if not impression_id.strip():
    raise readers.InvalidRowError('The impression id (column 1) is empty.')
  time = _parse_time(time_text)
  entries = _parse_impressions(impressions)

  for position, (news_id, click) in enumerate(entries, start=1):
    example = base.empty_example(_FEATURE_TYPES)
    example.update(
        example_id=f'{impression_id}-{position}', news_id=news_id,
        impression_id=impression_id, user_id=user_id,
        history=history.split(), time=time, click=click)
    yield news_id, example


def _parse_time(text: str) -> int:
  try:
    parsed = datetime.datetime.strptime(text.strip(), _TIME_FORMAT)
  except ValueError as e:
    raise readers.InvalidRowError(
        f'The time (column 3) is {readers.quote_value(text)}, not '
        f'MM/DD/YYYY HH:MM:SS AM/PM: {e}.') from e
  return int(parsed.replace(tzinfo=datetime.timezone.utc).timestamp())


def _parse_impressions(text: str) -> List[tuple]:
  """Parse `newsid-label` entries into `(news id, '0' or '1')` pairs."""
  entries = []
  for entry in text.split():
    news_id, _, label = entry.rpartition('-')
    if not news_id or label not in ('0', '1'):
      raise readers.InvalidRowError(
          f'The impression entry {readers.quote_value(entry)} (column 5) is '
          'not newsid-label with label 0 or 1.')
    entries.append((news_id, label))
  if not entries:
    raise readers.InvalidRowError(
        'The impression list (column 5) is empty; an impression shows at '
        'least one story.')
  return entries


class _BuildExamples(beam.DoFn):
  """Emit a news id's story example and its shown stories with the text.

  A news id defined by more than one news.tsv row keeps its first row (by
  file and row number); the others are rejected.
  """

  def process(self, element):
    news_id, grouped = element
    stories = sorted(grouped[_STORIES], key=lambda s: (s[0], s[1]))
    story = None
    if stories:
      source, row, _, story = stories[0]
      yield story
      for dup_source, dup_row, dup_raw, _ in stories[1:]:
        reason = (f'The news id {news_id!r} is already defined at {source} '
                  f'row {row}.')
        yield beam.pvalue.TaggedOutput(
            readers.REJECTED,
            readers.rejected_row(dup_source, dup_row, reason, dup_raw))

    for example in grouped[_SHOWN]:
      if story is not None:
        example = dict(example, title=story['title'],
                       abstract=story['abstract'],
                       subcategory=story['subcategory'])
      yield example
